"""Building blocks of the Llama-style decoder: RMSNorm, SwiGLU MLP, rotary embedding, attention.

The backend switch lives here: ``cfg.kernels == "torch"`` calls the pure-torch references in
``kernels.reference``; ``"triton"`` calls ``kernels.rms_norm`` / ``kernels.swiglu``, which run Triton
on CUDA (or under TRITON_INTERPRET=1) and otherwise fall back to the same references. Both backends
own the same parameters, so state_dict keys do not depend on the backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig


def _norm_fn(backend: str):
    # Imported lazily so that building a torch-backend model never needs the Triton kernels module.
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


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (no bias, like the seed)."""

    def __init__(self, dim: int, eps: float, backend: str = "torch") -> None:
        super().__init__()
        self.eps = eps
        self.backend = backend
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _norm_fn(self.backend)(x, self.weight, self.eps)


class SwiGLUMLP(nn.Module):
    """c_proj(silu(w1 x) * w2 x), hidden width cfg.hidden, no biases."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.backend = cfg.kernels
        self.w1 = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.n_embd, cfg.hidden, bias=False)
        self.c_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(_swiglu_fn(self.backend)(self.w1(x), self.w2(x)))


def rope_cache(
    cfg: ModelConfig, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (T, head_dim) cos and sin tables in rotate-half layout (frequency i on lanes i and i+hd/2)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (
        cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd)
    )
    t = torch.arange(cfg.sequence_length, dtype=torch.float64, device=device)
    ang = torch.outer(t, inv_freq)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, hd) queries/keys; computed in fp32 (the seed keeps rotary in fp32) then cast back."""
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
    """Causal self-attention with RoPE and optional grouped-query attention (n_kv_head < n_head).

    q, k and v come from one fused projection ``c_attn`` of width n_embd + 2 * kv_heads * head_dim.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.attention = cfg.attention
        kv_dim = self.kv_heads * self.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * kv_dim, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        kv_dim = self.kv_heads * self.head_dim
        q, k, v = self.c_attn(x).split([C, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.kv_heads, self.head_dim)
        v = v.view(B, T, self.kv_heads, self.head_dim)
        cos_t, sin_t = (
            cos[:T, None, :],
            sin[:T, None, :],
        )  # broadcast over heads in (B, T, H, hd) layout
        q = apply_rope(q, cos_t, sin_t)
        k = apply_rope(k, cos_t, sin_t)
        flash = _flash_attn_func() if (self.attention == "flash" and x.is_cuda) else None
        if flash is not None and x.dtype in (torch.float16, torch.bfloat16):
            y = flash(q, k, v, causal=True)  # (B, T, H, hd); flash-attn handles GQA natively
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if self.kv_heads != self.n_head:
                # Explicit repeat rather than enable_gqa: works on every torch/backends and keeps the
                # FLOP counter's view of attention identical to multi-head attention.
                rep = self.n_head // self.kv_heads
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        return self.c_proj(y.reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.kernels)
        self.attn = Attention(cfg)
        self.ln_2 = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.kernels)
        self.mlp = SwiGLUMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))
