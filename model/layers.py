"""Building blocks of both decoder families: norms, MLPs, rotary embedding, attention, the block.

The backend switch lives here, per op (``cfg.uses_kernel``): an op on the torch path calls its
pure-torch reference in ``kernels.reference`` (which imports no Triton, so an all-torch model never
loads it); an op of ours calls ``kernels.rms_norm`` / ``kernels.swiglu``, which run Triton on CUDA
(or under TRITON_INTERPRET=1) and otherwise fall back to the same references. With our RMSNorm a
llama block also runs `Block.forward_fused`: each residual add is fused into the norm that follows
it (``kernels.add_rms_norm``), so the stream is read and written once per add+norm, not twice.
Both backends own the same parameters, so state_dict keys do not depend on the backend. The gpt2
family (LayerNorm, GELU) has no fused kernels and runs torch ops under either backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig


def _norm_fn(backend: str):
    # Imported lazily: the torch backend needs only kernels.reference, never the Triton kernels.
    if backend == "triton":
        from kernels import rms_norm

        return rms_norm
    from kernels.reference import rms_norm_ref

    return rms_norm_ref


def _swiglu_fn(backend: str):
    if backend == "triton":
        from kernels import swiglu

        return swiglu
    from kernels.reference import swiglu_ref

    return swiglu_ref


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # No op at all when p == 0, so the default model's op sequence (and its costs) has no dropout.
    return F.dropout(x, p, training) if p > 0 else x


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (no bias, like the seed)."""

    def __init__(self, dim: int, eps: float, backend: str = "torch") -> None:
        super().__init__()
        self.eps = eps
        self.backend = backend
        if backend == "triton":
            from kernels import register_ops

            # Before torch.compile can trace a call to the ops; only where Triton can run (a
            # triton-backend model on a CPU-only machine runs the references, without triton).
            register_ops(only_if_usable=True)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _norm_fn(self.backend)(x, self.weight, self.eps)


def _backend(cfg: ModelConfig, op: str) -> str:
    return "triton" if cfg.uses_kernel(op) else "torch"


def make_norm(cfg: ModelConfig) -> nn.Module:
    """RMSNorm for llama; LayerNorm (bias iff cfg.bias) for gpt2, both with eps cfg.norm_eps."""
    if cfg.arch == "gpt2":
        return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
    return RMSNorm(cfg.n_embd, cfg.norm_eps, _backend(cfg, "rmsnorm"))


class SwiGLUMLP(nn.Module):
    """c_proj(silu(w1 x) * w2 x), hidden width cfg.hidden, no biases (Shazeer 2020, 2002.05202)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.backend = _backend(cfg, "swiglu")
        self.dropout = cfg.dropout
        self.w1 = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.c_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c_proj(_swiglu_fn(self.backend)(self.w1(x), self.w2(x)))
        return _dropout(y, self.dropout, self.training)


class GELUMLP(nn.Module):
    """c_proj(gelu(c_fc x)), hidden width cfg.hidden (4 * n_embd by default), GPT-2 style.

    GELU is the exact erf form (Hendrycks & Gimpel 2016, arXiv:1606.08415), as nn.GELU() by default.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dropout = cfg.dropout
        self.c_fc = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dropout(self.c_proj(F.gelu(self.c_fc(x))), self.dropout, self.training)


def rope_cache(
    cfg: ModelConfig, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (T, head_dim) cos/sin tables in rotate-half layout (frequency i on lanes i, i+hd/2)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (
        cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd)
    )
    t = torch.arange(cfg.sequence_length, dtype=torch.float64, device=device)
    ang = torch.outer(t, inv_freq)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, H, hd) queries/keys (Su et al. 2021, arXiv:2104.09864) in fp32, cast back."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rot * sin).to(x.dtype)


def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func  # optional dependency, only useful on CUDA
    except Exception:
        return None
    return flash_attn_func


class Attention(nn.Module):
    """Causal self-attention, optional grouped-query attention (n_kv_head < n_head), RoPE for llama.

    q, k and v come from one fused projection ``c_attn`` of width n_embd + 2 * kv_heads * head_dim.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.attention = cfg.attention
        self.rope = cfg.arch == "llama"
        self.dropout = cfg.dropout
        kv_dim = self.kv_heads * self.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * kv_dim, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None):
        B, T, C = x.shape
        kv_dim = self.kv_heads * self.head_dim
        q, k, v = self.c_attn(x).split([C, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.kv_heads, self.head_dim)
        v = v.view(B, T, self.kv_heads, self.head_dim)
        if self.rope:
            cos_t, sin_t = cos[:T, None, :], sin[:T, None, :]  # broadcast over heads
            q = apply_rope(q, cos_t, sin_t)
            k = apply_rope(k, cos_t, sin_t)
        p = self.dropout if self.training else 0.0
        flash = _flash_attn_func() if (self.attention == "flash" and x.is_cuda) else None
        if flash is not None and x.dtype in (torch.float16, torch.bfloat16):
            y = flash(q, k, v, dropout_p=p, causal=True)  # (B, T, H, hd); native GQA
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if self.kv_heads != self.n_head:
                # Explicit repeat rather than enable_gqa: works on every torch and backend, and
                # keeps the FLOP counter's view of attention identical to multi-head attention.
                rep = self.n_head // self.kv_heads
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            y = y.transpose(1, 2)
        return _dropout(self.c_proj(y.reshape(B, T, C)), self.dropout, self.training)


def fused_blocks(cfg: ModelConfig) -> bool:
    """Whether the blocks run `Block.forward_fused` (llama with our RMSNorm kernels)."""
    return cfg.uses_kernel("rmsnorm")


def add_norm(norm: RMSNorm, branch: torch.Tensor | None, stream: torch.Tensor):
    """(norm(stream + branch), stream + branch) in one fused pass; the norm alone for no branch."""
    if branch is None:
        return norm(stream), stream
    from kernels import add_rms_norm

    return add_rms_norm(branch, stream, norm.weight, norm.eps)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = GELUMLP(cfg) if cfg.arch == "gpt2" else SwiGLUMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None):
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))

    def forward_fused(self, x, pending, cos, sin):
        """The same block with its residual adds deferred into the next norm: takes the stream
        ``x`` and the previous block's branch output ``pending`` (None for the first block, whose
        stream is complete) and returns (stream, this block's MLP output) still to be added, by the
        next block's ln_1 or the final norm. The stream then equals `forward`'s to rounding."""
        y, x = add_norm(self.ln_1, pending, x)
        y, x = add_norm(self.ln_2, self.attn(y, cos, sin), x)
        return x, self.mlp(y)
