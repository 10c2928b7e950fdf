"""ModelConfig: the one architecture description shared by model, train, bench and timemodel.

Standard library only, so that `timemodel` can score millions of configs without torch.
Field names follow the CLI flags of the seed code (Hägele et al. 2024, arXiv:2405.18392; upstream
epfml/schedules-and-scaling `src/config/base.py`): `--n-layer` -> n_layer, `--n-embd` -> n_embd, and
so on; its `--model llama|base` is `arch="llama"|"gpt2"` here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from core import UserError

KERNELS = ("torch", "triton")
# The ops our Triton kernels replace, each chosen on its own (kernels="rmsnorm+swiglu" runs ours
# for those two and the torch ops for the rest): RMSNorm (with the residual add fused into it),
# the SwiGLU product, and the LM head's linear + cross-entropy over vocabulary chunks.
KERNEL_OPS = ("rmsnorm", "swiglu", "linear_ce")


def parse_kernels(text: str, *, auto: bool = False) -> str:
    """The canonical spelling of a kernels choice: "torch" (no op of ours), "triton" (every op
    of ours), or a "+"-joined subset of KERNEL_OPS in that order (e.g. "rmsnorm+linear_ce");
    with `auto`, also "auto" (train's and the sweep's: decided at start-up). UserError else."""
    if not isinstance(text, str):
        raise UserError(f"kernels must be a string, got {_short(text)}")
    if text in KERNELS or (auto and text == "auto"):
        return text
    ops = text.split("+")
    bad = [o for o in ops if o not in KERNEL_OPS]
    if bad or len(set(ops)) != len(ops):
        why = f"unknown op {bad[0]!r}" if bad else "an op named twice"
        first = "auto, torch, triton" if auto else "torch, triton"
        raise UserError(
            f"kernels must be {first} or some of {', '.join(KERNEL_OPS)} joined by '+', "
            f"got {text!r} ({why})"
        )
    if set(ops) == set(KERNEL_OPS):
        return "triton"
    return "+".join(o for o in KERNEL_OPS if o in ops)


def kernel_ops(kernels: str) -> frozenset[str]:
    """The ops a (canonical or not) kernels choice runs with our kernels."""
    k = parse_kernels(kernels)
    if k == "torch":
        return frozenset()
    return frozenset(KERNEL_OPS) if k == "triton" else frozenset(k.split("+"))


ATTENTIONS = ("sdpa", "flash")
ARCHS = ("llama", "gpt2")


def seed_ffn_hidden(n_embd: int, multiple_of: int = 256) -> int:
    """The seed's SwiGLU width: multiple_of * ceil(int(8 * n_embd / 3) / multiple_of)."""
    hidden = int(2 * (4 * n_embd) / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


# The largest size of any one dimension: a tensor dimension torch indexes with int32 kernels, and
# small enough that products of sizes (params, FLOPs) stay far inside a float's range.
MAX_SIZE = 2**31 - 1


def _positive_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v > 0


def _short(v) -> str:
    """repr(v), cut short (a 300-digit number makes no readable error line)."""
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of one of two families (`arch`).

    "llama" (the default): pre-norm RMSNorm, RoPE, causal attention, SwiGLU MLP of width `hidden`,
    no positional embedding; with bias=True the attention projections get biases, as in the seed's
    `src/models/llama.py` (its SwiGLU MLP and RMSNorm never have one).
    "gpt2": GPT-2 / Megatron style (Radford et al. 2019; the seed's `--model base`): pre-norm
    LayerNorm (with a bias when bias=True), GELU MLP of width 4 * n_embd unless ffn_hidden is
    given, learned position embeddings, biases on every block linear when bias=True. It has no
    Triton kernels (any kernels value runs the same torch ops). n_kv_head (GQA) works in both.
    Neither family has a bias on the LM head; it is tied to the token embedding when tie_embeddings.
    dropout (embedding, attention probabilities, residual branches) is active in training only.
    """

    vocab_size: int = 50304
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12
    n_kv_head: int | None = None  # None -> multi-head attention (n_kv_head = n_head)
    ffn_hidden: int | None = None  # None -> seed_ffn_hidden(...), or 4 * n_embd for gpt2
    multiple_of: int = 256  # SwiGLU width rounding, the seed's --multiple-of
    sequence_length: int = 512
    tie_embeddings: bool = False  # the seed ties wte and lm_head; its presets below do too
    norm_eps: float = 1e-5  # the seed's --rmsnorm-eps (also the LayerNorm eps of gpt2)
    rope_theta: float = 10000.0
    init_std: float = 0.02
    kernels: str = "torch"  # "torch" | "triton" (all our kernels) | ops joined by "+" (KERNEL_OPS)
    attention: str = "sdpa"  # "sdpa" | "flash" (flash-attn when installed and on CUDA)
    arch: str = "llama"  # "llama" | "gpt2" (the seed's --model llama|base)
    bias: bool = False  # the seed's --bias
    dropout: float = 0.0  # the seed's --dropout

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "sequence_length", "multiple_of"):
            v = getattr(self, name)
            if not _positive_int(v):
                raise UserError(f"{name} must be a positive integer, got {_short(v)}")
            if v > MAX_SIZE:
                raise UserError(f"{name} {_short(v)} is over {MAX_SIZE:,}: no model that size fits")
        for name in ("n_kv_head", "ffn_hidden"):
            v = getattr(self, name)
            if v is not None and not _positive_int(v):
                raise UserError(f"{name} must be a positive integer or None, got {_short(v)}")
            if v is not None and v > MAX_SIZE:
                raise UserError(f"{name} {_short(v)} is over {MAX_SIZE:,}: no model that size fits")
        for name in ("tie_embeddings", "bias"):  # 0/1 from a CSV table read as False/True
            v = getattr(self, name)
            if v not in (0, 1) or isinstance(v, float):
                raise UserError(f"{name} must be true or false, got {v!r}")
            object.__setattr__(self, name, bool(v))
        if self.arch not in ARCHS:
            raise UserError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.arch == "llama" and self.head_dim % 2:
            raise UserError(f"head dim n_embd/n_head={self.head_dim} must be even for RoPE")
        if self.n_head % self.kv_heads:
            raise UserError(f"n_head={self.n_head} is not divisible by n_kv_head={self.kv_heads}")
        for name in ("norm_eps", "rope_theta", "init_std"):
            v = getattr(self, name)
            try:  # a float from here on: an int too large for one is refused, not passed on
                ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and 0 < float(v)
            except OverflowError:
                ok = False
            if not ok or not math.isfinite(float(v)):
                raise UserError(f"{name} must be a finite number > 0, got {_short(v)}")
            object.__setattr__(self, name, float(v))
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0 <= d < 1:
            raise UserError(f"dropout must be in [0, 1), got {_short(d)}")
        object.__setattr__(self, "dropout", float(d))
        object.__setattr__(self, "kernels", parse_kernels(self.kernels))
        if self.attention not in ATTENTIONS:
            raise UserError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")

    # Derived values are properties, never fields, so a results row cannot disagree with them.
    def uses_kernel(self, op: str) -> bool:
        """Whether the model runs our Triton kernel for `op` (one of KERNEL_OPS): only llama has
        them; gpt2's LayerNorm and GELU run torch ops whatever `kernels` says."""
        if op not in KERNEL_OPS:
            raise ValueError(f"unknown kernel op {op!r}")
        return self.arch == "llama" and op in kernel_ops(self.kernels)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def hidden(self) -> int:
        """The MLP hidden width actually built (SwiGLU for llama, GELU for gpt2)."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.arch == "gpt2":
            return 4 * self.n_embd
        return seed_ffn_hidden(self.n_embd, self.multiple_of)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


def _seed(n_embd: int, n_layer: int) -> ModelConfig:
    # The model suite of Hägele et al. 2024 (arXiv:2405.18392, Table 2): vocab 50304, sequence 512,
    # head dim 64, tied embeddings.
    return ModelConfig(
        vocab_size=50304,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_embd // 64,
        sequence_length=512,
        tie_embeddings=True,
    )


PRESETS: dict[str, ModelConfig] = {
    # Byte-level (vocab 256) models that train in seconds on a CPU.
    "tiny": ModelConfig(
        vocab_size=256, n_layer=2, n_embd=64, n_head=4, ffn_hidden=192, sequence_length=64
    ),
    "small": ModelConfig(
        vocab_size=256, n_layer=4, n_embd=128, n_head=4, ffn_hidden=384, sequence_length=128
    ),
    "33M": _seed(384, 8),
    "53M": _seed(512, 8),
    "60M": _seed(512, 10),
    "93M": _seed(640, 12),
    "124M": _seed(768, 12),
    "151M": _seed(768, 16),
    "166M": _seed(896, 12),
    "210M": _seed(768, 24),
    "360M": _seed(1024, 24),
}

# Parameter counts reported for that suite (Hägele et al. 2024, Table 2), for comparison tables.
SEED_REPORTED_PARAMS: dict[str, float] = {
    "33M": 33.45e6,
    "53M": 52.99e6,
    "60M": 59.81e6,
    "93M": 93.11e6,
    "124M": 123.53e6,
    "151M": 151.84e6,
    "166M": 166.14e6,
    "210M": 208.47e6,
    "360M": 359.74e6,
}


# Held-out tokens behind a sweep's val_loss (`bench sweep --val-tokens`): the same sequences for
# every config of a sequence length. Here, below bench and timemodel, so both read one number.
VAL_TOKENS = 16384


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
