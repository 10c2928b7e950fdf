"""Exact parameter, FLOP, memory-traffic and kernel-launch counts of model.transformer.Transformer.

Standard library only (no torch, no numpy) so that timemodel can import it; every formula is
plain arithmetic that also works element-wise on numpy arrays, shared by the scalar functions and
``vectorized``. Traffic and launches come op by op from ``model._opcount`` (one entry per aten op
or Triton kernel of the eager step), tested against ``model.traffic.measure_step``.

Notation: V vocab, L layers, d n_embd, H heads, G kv heads, hd = d/H, kvd = G*hd, f MLP width
(SwiGLU for llama, GELU for gpt2), T sequence length, B micro-batch (sequences), N = B*T tokens.

FLOP conventions (per micro-step of B sequences; ``flops_per_token`` divides by N):
  exact      2*m*n*k for every matmul of forward + backward, as torch.utils.flop_counter counts
             it: linears fwd 2*N*in*out, bwd twice that (grad input + grad weight; every linear
             needs a grad input because the embedding output requires grad); attention fwd
             4*B*H*T^2*hd (QK^T and PV), bwd twice that. Causal masking is not discounted (the
             counter and the math kernel charge the full T x T scores). Bias adds, the embedding
             gather, norms, activations, RoPE and softmax are not counted (the counter ignores
             them; their cost is memory traffic).
  kaplan     6 * N_nonembedding * tokens: N without token/position embeddings and an untied head
             (Kaplan et al. 2020, arXiv:2001.08361, §2.1).
  porian     6 * (N_nonembedding + V*d) * tokens: one V*d for the head (Porian et al. 2024,
             arXiv:2406.19146, §2 "last layer" FLOPs).
  chinchilla 3 * F_fwd per sequence * B, F_fwd from Hoffmann et al. 2022 (arXiv:2203.15556, App. F)
             with key size hd, H heads, the k/v projections sized by G (GQA) and the dense term
             3*d*f (SwiGLU) or 2*d*f (GELU).
  palm       (6*N + 12*L*H*hd*T) * tokens (Chowdhery et al. 2022, arXiv:2204.02311, App. B), N =
             parameters without position embeddings (as nanoGPT's MFU estimate); used by ``mfu``.
"""

from __future__ import annotations

import functools
import inspect

from core import UserError
from model import _opcount as _ops
from model._poly import Poly
from model.config import ATTENTIONS, ModelConfig, parse_kernels

FLOP_KEYS = ("exact", "kaplan", "porian", "chinchilla", "palm")
TRAFFIC_KEYS = (*_ops.CLASSES, "total")
LAW_CONVENTIONS = ("porian", "kaplan", "total")
OPTIMIZERS = ("fused_adamw", "torch_adamw", "none")  # "none": forward and backward only
GRADS = ("persistent", "none")

# Dense tensor-core peaks (FLOP/s, no sparsity) from NVIDIA's datasheets: H100 (SXM5 / PCIe /
# NVL), H200 and GH200 (same Hopper SXM compute), A100 (SXM4 and PCIe), L4. "tf32" is what fp32
# matmuls get with TF32 enabled, as train/loop.py does. Matched by substring against the device
# name, most specific first ("NVIDIA GH200 480GB" also contains "H200").
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "GH200": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12},
}
_PEAK_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "tf32"}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}

# The per-device, per-optimizer-step features of `step_features`, for step-time models.
STEP_FEATURES = (
    "params",  # unique trainable parameters (== sum of numel over model.parameters())
    "tokens",  # tokens per step per device: batch_size * acc_steps * sequence_length
    "micro_steps",  # forward/backward passes per step (= acc_steps)
    "flops",  # exact training FLOPs per step (matmul_flops + other_flops), recompute included
    "matmul_flops",  # FLOPs of the dense linear layers (cuBLAS GEMMs), LM head included
    "other_flops",  # the rest of "flops": attention QK^T and PV inside the fused SDPA kernel
    "attention_scores",  # elements of the T x T attention scores per step (_opcount.scores)
    "bytes",  # device-memory traffic per step (the sum of the bytes_<class> below)
    *(f"bytes_{k}" for k in _ops.CLASSES),  # traffic by op class (model._opcount.CLASSES)
    "launches",  # kernel launches per step (dispatched aten ops + Triton kernels, see traffic.py)
    "allreduce_bytes",  # bytes each device sends (and receives) in the fp32 gradient all-reduce
)


def _dtype(dtype: str) -> str:
    name = str(dtype).replace("torch.", "")
    name = _ALIASES.get(name, name)
    if name not in _PEAK_DTYPE:
        raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(_PEAK_DTYPE)}")
    return name


def _cfg_params(c: ModelConfig) -> dict:
    return _ops.params(
        c.vocab_size, c.n_layer, c.n_embd, c.n_head, c.kv_heads, c.hidden, c.sequence_length,
        int(c.tie_embeddings), int(c.bias), int(c.arch == "llama"),
    )  # fmt: skip


def num_params(cfg: ModelConfig) -> int:
    """Unique trainable parameters (a tied wte/lm_head counts once) == the model's numel sum."""
    return int(_cfg_params(cfg)["total"])


def param_breakdown(cfg: ModelConfig) -> dict:
    t = _cfg_params(cfg)
    return {
        "total": t["total"],
        "non_embedding": t["nonembed"],
        "embedding": t["embed"],
        "position_embedding": t["wpe"],
        "lm_head": t["head"],
        "per_layer": t["layer"],
        "final_norm": t["nonembed"] - cfg.n_layer * t["layer"],
    }


def law_params(cfg: ModelConfig, convention: str) -> int:
    """N of a loss law L(N, D) under `convention` (one of LAW_CONVENTIONS).

    porian: non-embedding parameters + one V*d (the head), Porian et al. 2024 (arXiv:2406.19146,
      §2); kaplan: without token/position embeddings and untied head, Kaplan et al. 2020
      (arXiv:2001.08361, §2.1); total: every unique trainable parameter.
    """
    if convention not in LAW_CONVENTIONS:
        raise UserError(f"unknown N convention {convention!r}; choose from {LAW_CONVENTIONS}")
    t = _cfg_params(cfg)
    return int(
        {"porian": t["nonembed"] + t["embed"], "kaplan": t["nonembed"]}.get(convention, t["total"])
    )


def train_flops(c: ModelConfig, batch_size: int, *, activation_checkpointing=False) -> dict:
    """FLOPs of one forward + backward of batch_size sequences (cfg `c`) per convention
    (FLOP_KEYS), and the "exact" count split into "matmul" (linear layers) and "other"
    (attention)."""
    t = _cfg_params(c)
    return _ops.flops(
        c.vocab_size, c.n_layer, c.n_embd, c.n_head, c.kv_heads, c.hidden, c.sequence_length,
        batch_size, 3 if c.arch == "llama" else 2, t["total"], t["wpe"], t["nonembed"],
        int(bool(activation_checkpointing)), int(c.dropout > 0),
    )  # fmt: skip


def flops_per_token(cfg: ModelConfig) -> dict:
    return {k: v / cfg.sequence_length for k, v in train_flops(cfg, 1).items()}


# ------------------------------------------------------------------------ traffic, launches
_VARS = ("V", "L", "d", "H", "G", "f", "T", "B", "hd", "gqa", "kv_copy", "progs", "tie", "bias",
         "chunks", "crows")  # fmt: skip
_ROWS = 8 * 132  # fused RMSNorm backward: at most 8 programs per SM on 132 SMs (kernels/rmsnorm.py)
_ALL = (*STEP_FEATURES, *(f"launches_{k}" for k in _ops.CLASSES))


def _build(impl: tuple, x: dict, detail: bool = False) -> _ops.Ledger:
    """The op ledger of one step for implementation `impl` (a `_resolve` key) at values `x`."""
    arch, kernels, dtype, attention, optimizer, averages, dropout = impl
    c = _ops.dims(*(x[k] for k in _VARS), arch=arch, kernels=kernels, autocast=dtype != "float32",
                  native_flash=attention == "flash", dropout=dropout)  # fmt: skip
    return _ops.step(c, x["P"], acc_steps=x["acc"], ckpt=x["ckpt"], kind=optimizer,
                     averages=averages, persistent=x["persist"], detail=detail)  # fmt: skip


@functools.lru_cache(maxsize=256)
def _ledger(*impl) -> dict:
    """{"bytes", "bytes_<class>", "launches", "launches_<class>": Poly} of one step of one
    implementation (the op ledger runs once, symbolically)."""
    led = _build(impl, {k: Poly.var(k) for k in (*_VARS, "acc", "ckpt", "persist", "P")})
    out = {"bytes": sum(led.bytes.values()), "launches": sum(led.launches.values())}
    out.update({f"bytes_{k}": v for k, v in led.bytes.items()})
    out.update({f"launches_{k}": v for k, v in led.launches.items()})
    return out


def _resolve(cfg: ModelConfig, batch_size, kw: dict) -> tuple:
    """Validate the implementation arguments; the `_ledger` key (arch, kernels, dtype, ...)."""
    kernels, attention = kw["kernels"] or cfg.kernels, kw["attention"] or cfg.attention
    kernels = parse_kernels(kernels)  # one spelling per choice, so one ledger per choice
    averages = {None: 0, "swa": 1, "ema": 1, "swa+ema": 2}.get(kw["average"])
    checks = (
        (attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {attention!r}"),
        (kw["optimizer"] in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
        (averages is not None, f"average must be None, swa, ema or swa+ema, not {kw['average']!r}"),
        (kw["grads"] in GRADS, f"grads must be one of {GRADS}, got {kw['grads']!r}"),
    )
    for v, name in ((batch_size, "batch_size"), (kw["acc_steps"], "acc_steps")):
        ok = not isinstance(v, bool) and isinstance(v, int) and v > 0
        checks += ((ok, f"{name} must be a positive integer, got {v!r}"),)
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    dtype = _dtype(kw["dtype"])
    return (cfg.arch, kernels, dtype, attention, kw["optimizer"], averages, cfg.dropout > 0)


def _env(V, L, d, H, G, f, T, B, tie, bias, params, acc, ckpt, persist, itemsize=4) -> dict:
    """The values of the ledger's variables (numbers or numpy arrays); `itemsize`: bytes of the
    compute dtype (the fused cross-entropy's logits)."""
    N = B * T
    chunks, crows = _ops.flce_chunks(N, V, itemsize)
    rows = N - (N - _ROWS) * (N > _ROWS)  # min(N, _ROWS), array-safe
    progs = -(-N // -(-N // rows))  # cdiv(N, cdiv(N, rows)): the programs that get rows
    gqa = (G < H) * 1
    env = dict(V=V, L=L, d=d, H=H, G=G, f=f, T=T, B=B, hd=d // H, gqa=gqa, progs=progs, tie=tie,
               kv_copy=gqa * (G > 1) * (T > 1), bias=bias, acc=acc, ckpt=ckpt, chunks=chunks,
               crows=crows)  # fmt: skip
    env.update(P=params, persist=persist)
    return env


def _itemsize(dtype: str) -> int:
    return 4 if _dtype(dtype) == "float32" else 2


def _cfg_env(c: ModelConfig, batch_size: int, kw: dict) -> dict:
    return _env(
        c.vocab_size, c.n_layer, c.n_embd, c.n_head, c.kv_heads, c.hidden, c.sequence_length,
        batch_size, int(c.tie_embeddings), int(c.bias), num_params(c), kw["acc_steps"],
        int(bool(kw["activation_checkpointing"])), int(kw["grads"] == "persistent"),
        _itemsize(kw["dtype"]),
    )  # fmt: skip


def _features(counted: dict, fl: dict, env: dict, dp) -> dict:
    """STEP_FEATURES (and whatever else `counted` holds) from the evaluated ledger and FLOPs."""
    acc, params = env["acc"], env["P"]
    counted.update(
        params=params,
        tokens=env["B"] * acc * env["T"],
        micro_steps=acc,
        flops=acc * fl["exact"],
        matmul_flops=acc * fl["matmul"],
        other_flops=acc * fl["other"],
        attention_scores=acc * _ops.scores(env["L"], env["H"], env["T"], env["B"], env["ckpt"]),
        # Ring all-reduce: each device sends (and receives) 2 (dp - 1) / dp of the fp32 gradients
        # (Patarasuk & Yuan 2009, JPDC 69(2); "bus bandwidth" in nccl-tests doc/PERFORMANCE.md).
        allreduce_bytes=2 * (dp - 1) / dp * 4 * params,
    )
    return counted


def _step(cfg: ModelConfig, batch_size: int, kw: dict) -> dict:
    """step_features' dict (numbers) for cfg; kw: the keyword arguments of memory_traffic."""
    impl = _resolve(cfg, batch_size, kw)
    env = _cfg_env(cfg, batch_size, kw)
    fl = train_flops(cfg, batch_size, activation_checkpointing=env["ckpt"])
    return _features(Poly.evaluate(_ledger(*impl), env), fl, env, kw.get("dp", 1))


def _defaults() -> dict:
    names = inspect.signature(memory_traffic).parameters.values()
    return {p.name: p.default for p in names if p.kind == p.KEYWORD_ONLY}


def op_table(cfg: ModelConfig, batch_size: int, **kw) -> dict[str, tuple[int, float]]:
    """{op: (launches, bytes)} of one step, op by op as model/_opcount.py lists them and with the
    names model.traffic.measure_step reports; keyword arguments as memory_traffic's."""
    kw = {**_defaults(), **kw}
    led = _build(_resolve(cfg, batch_size, kw), _cfg_env(cfg, batch_size, kw), detail=True)
    return {k: (int(n), float(b)) for k, (n, b) in led.ops.items() if n}


def memory_traffic(
    cfg: ModelConfig,
    batch_size: int,
    *,
    dtype: str = "float32",
    kernels: str | None = None,
    attention: str | None = None,
    optimizer: str = "fused_adamw",
    average: str | None = None,
    acc_steps: int = 1,
    activation_checkpointing: bool = False,
    grads: str = "persistent",
) -> dict:
    """Bytes read + written in device memory by one optimizer step, by op class (TRAFFIC_KEYS).

    dtype "float32" runs fp32; "bfloat16"/"float16" is autocast over fp32 parameters. kernels and
    attention default to cfg's; kernels: "torch", "triton" or our ops joined by "+"
    (model.config.KERNEL_OPS, e.g. "rmsnorm+linear_ce"); attention="flash" means flash-attn
    (16-bit dtypes, CUDA only).
    optimizer: "fused_adamw" (kernels.adamw.FusedAdamW's Triton pass, `average` None, "swa", "ema"
    or "swa+ema"), "torch_adamw" (torch.optim.AdamW(foreach=False)) or "none". Counted as
    model.traffic.measure_step counts the real step (each op reads its inputs and writes its
    outputs in full; see model/_opcount.py). grads "persistent": kept and zeroed in place
    between steps (zero_grad(set_to_none=False), as train/step.py does), "none": set to None.
    Not counted: data loading and host copies, the trainer's loss bookkeeping, cache reuse.
    """
    f = _step(cfg, batch_size, dict(locals()))
    out = {k: float(f[f"bytes_{k}"]) for k in _ops.CLASSES}
    out["total"] = float(f["bytes"])
    return out


def kernel_launches(cfg: ModelConfig, batch_size: int, **kw) -> dict:
    """Kernel launches of one step by op class, and "total"; keyword arguments as memory_traffic's.
    A launch: a dispatched aten op doing device work, or a Triton kernel (model/traffic.py)."""
    unknown = sorted(set(kw) - set(_defaults()))
    if unknown:
        raise TypeError(f"kernel_launches() got unexpected keyword arguments {unknown}")
    f = _step(cfg, batch_size, {**_defaults(), **kw})
    out = {k: int(f[f"launches_{k}"]) for k in _ops.CLASSES}
    out["total"] = int(f["launches"])
    return out


def step_features(
    cfg: ModelConfig,
    batch_size: int,
    *,
    acc_steps: int = 1,
    dp: int = 1,
    dtype: str = "float32",
    kernels: str | None = None,
    activation_checkpointing: bool = False,
    attention: str | None = None,
    optimizer: str = "fused_adamw",
    average: str | None = None,
    grads: str = "persistent",
) -> dict[str, float]:
    """The step-time features (STEP_FEATURES) of one optimizer step, per device.

    batch_size: sequences per micro-batch per device; acc_steps: micro-batches per step; dp:
    data-parallel devices; activation_checkpointing: every block's forward is recomputed in the
    backward (Chen et al. 2016, arXiv:1604.06174), adding its FLOPs, bytes and launches. The other
    arguments are memory_traffic's (kernels and attention default to cfg's).
    """
    if isinstance(dp, bool) or not isinstance(dp, int) or dp <= 0:
        raise UserError(f"dp must be a positive integer, got {dp!r}")
    f = _step(cfg, batch_size, dict(locals()))
    return {k: float(f[k]) for k in STEP_FEATURES}


def vectorized(
    vocab_size,
    n_layer,
    n_embd,
    n_head,
    n_kv_head,
    ffn_hidden,
    sequence_length,
    batch_size,
    tie_embeddings=0,
    *,
    bias=0,
    arch: str = "llama",
    acc_steps=1,
    dp=1,
    activation_checkpointing=0,
    dtype: str = "float32",
    kernels: str = "torch",
    attention: str = "sdpa",
    optimizer: str = "fused_adamw",
    average: str | None = None,
    dropout: float = 0.0,
    grads: str = "persistent",
    features=None,
) -> dict:
    """step_features for arrays of configs (numpy arrays or numbers, broadcast element-wise).

    The positional arguments, tie_embeddings, bias (0/1), acc_steps, dp and
    activation_checkpointing (0/1) may be arrays; arch, dtype, kernels, attention, optimizer,
    average, dropout and grads (see memory_traffic) are one value for the whole call. ffn_hidden
    is the MLP width as built (ModelConfig.hidden). Returns the names in `features` (default:
    every STEP_FEATURES key and "launches_<class>"; ask only for what you need, it is faster),
    always with "law_<convention>" for each of LAW_CONVENTIONS (law_params). Values equal the
    scalar functions' for each config.
    """
    if arch not in ("llama", "gpt2"):
        raise UserError(f"arch must be llama or gpt2, got {arch!r}")
    want = _ALL if features is None else tuple(features)
    unknown = sorted(set(want) - set(_ALL))
    if unknown:
        raise UserError(f"unknown feature(s) {unknown}; choose from {', '.join(_ALL)}")
    cfg = ModelConfig(arch=arch, kernels=kernels, attention=attention, dropout=dropout)
    kw = dict(kernels=None, attention=None, optimizer=optimizer, average=average, dtype=dtype)
    impl = _resolve(cfg, 1, {**kw, "acc_steps": 1, "grads": grads})
    V, L, d, H, G, f, T, B = (vocab_size, n_layer, n_embd, n_head, n_kv_head, ffn_hidden,
                              sequence_length, batch_size)  # fmt: skip
    llama, tie, ckpt = 1 if arch == "llama" else 0, tie_embeddings * 1, activation_checkpointing * 1
    pr = _ops.params(V, L, d, H, G, f, T, tie, bias * 1, llama)
    fl = _ops.flops(V, L, d, H, G, f, T, B, 2 + llama, pr["total"], pr["wpe"], pr["nonembed"],
                    ckpt, int(dropout > 0))  # fmt: skip
    env = _env(V, L, d, H, G, f, T, B, tie, bias * 1, pr["total"], acc_steps, ckpt,
               int(grads == "persistent"), _itemsize(dtype))  # fmt: skip
    polys = _ledger(*impl)
    out = _features(Poly.evaluate({k: polys[k] for k in want if k in polys}, env), fl, env, dp)
    zero = 0 * pr["total"] + 0 * B  # broadcasts every value to the configs' shape
    out = {k: out[k] + zero for k in want}
    laws = (pr["nonembed"] + pr["embed"], pr["nonembed"], pr["total"])  # LAW_CONVENTIONS order
    out.update({f"law_{k}": n for k, n in zip(LAW_CONVENTIONS, laws)})
    if "bytes" in out:
        out["memory_traffic"] = out["bytes"]
    return out


def peak_flops(device_name: str | None, dtype: str = "bfloat16") -> float | None:
    """Dense tensor-core peak FLOP/s of a GPU (PEAK_FLOPS) for matmuls in `dtype` (float32 means
    TF32); None for an unknown device or a CPU."""
    key = _PEAK_DTYPE[_dtype("float32" if str(dtype) == "tf32" else dtype)]
    name = (device_name or "").lower()
    for gpu, peaks in PEAK_FLOPS.items():
        if name and all(part.lower() in name for part in gpu.split()):
            return peaks.get(key)
    return None


def mfu(
    tokens_per_second: float, cfg: ModelConfig, device_name: str | None, dtype: str = "bfloat16"
) -> float | None:
    """Model FLOPs utilisation (Chowdhery et al. 2022, arXiv:2204.02311, App. B): the "palm"
    FLOPs per token times tokens/s over peak_flops(device_name, dtype); None if unknown/CPU."""
    peak = peak_flops(device_name, dtype)
    if peak is None:
        return None
    return tokens_per_second * flops_per_token(cfg)["palm"] / peak
