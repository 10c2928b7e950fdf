"""The decoder of both families: token embedding (+ learned positions for gpt2), pre-norm blocks,
a final norm and the LM head (tied to the token embedding when cfg.tie_embeddings).

arch="llama" follows the seed's `src/models/llama.py` (Hägele et al. 2024, arXiv:2405.18392;
Touvron et al. 2023, arXiv:2302.13971): RMSNorm, RoPE, SwiGLU, no positional embedding.
arch="gpt2" follows the seed's `src/models/base.py` (Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners"): LayerNorm, GELU, learned position embeddings, optional biases.

With our kernels (cfg.kernels, per op) a llama model fuses what Inductor cannot: with "rmsnorm",
each residual add into the next RMSNorm (`model.layers.Block.forward_fused`); with "linear_ce",
in training (targets given), the LM head into the cross-entropy
(``kernels.cross_entropy.linear_cross_entropy``), computed over the vocabulary in chunks so the
B x T x V logits never exist: that forward returns logits None.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import KERNEL_OPS, ModelConfig
from model.layers import Block, add_norm, fused_blocks, make_norm, rope_cache


class Transformer(nn.Module):
    """The decoder of `cfg`. activation_checkpointing: in training, each block's activations are
    dropped after its forward and recomputed in the backward (Chen et al. 2016, arXiv:1604.06174)
    with torch.utils.checkpoint; it may also be switched later through the attribute."""

    def __init__(self, cfg: ModelConfig, *, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.arch == "gpt2":
            self.wpe = nn.Embedding(cfg.sequence_length, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.arch == "llama":
            cos, sin = rope_cache(cfg)
            # Non-persistent: derived from cfg, so they stay out of state_dict and parameters().
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if any(cfg.uses_kernel(op) for op in KERNEL_OPS):
            from kernels import register_ops

            register_ops(only_if_usable=True)  # before torch.compile can trace a call to them
        self.apply(self._init)
        # GPT-2 scaling of residual output projections (Radford et al. 2019, §2.3) keeps the
        # residual stream variance O(1) in depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        """Unique parameters (a tied embedding/head matrix counts once) == costs.num_params."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.shape[1]
        if T > self.cfg.sequence_length:
            raise ValueError(
                f"sequence of length {T} exceeds sequence_length={self.cfg.sequence_length}"
            )
        x = self.wte(idx)
        cos = sin = None
        if self.cfg.arch == "gpt2":
            x = x + self.wpe.weight[:T]  # learned positions 0..T-1, broadcast over the batch
        else:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        if self.cfg.dropout > 0:
            x = F.dropout(x, self.cfg.dropout, self.training)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        if fused_blocks(self.cfg):
            y = self._blocks_fused(x, cos, sin, recompute)
        else:
            for block in self.blocks:
                if recompute:
                    x = checkpoint(block, x, cos, sin, use_reentrant=False)
                else:
                    x = block(x, cos, sin)
            y = self.ln_f(x)
        if targets is not None and self.cfg.uses_kernel("linear_ce"):
            from kernels.cross_entropy import linear_cross_entropy

            dev = y.device.type
            cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
            h = y.reshape(-1, y.shape[-1])
            return None, linear_cross_entropy(
                h, self.lm_head.weight, targets.reshape(-1), compute_dtype=cdt
            )
        logits = self.lm_head(y)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def _blocks_fused(self, x, cos, sin, recompute: bool):
        """The blocks and the final norm with each residual add fused into the next norm."""
        pending = None
        for block in self.blocks:
            if recompute:
                x, pending = checkpoint(
                    block.forward_fused, x, pending, cos, sin, use_reentrant=False
                )
            else:
                x, pending = block.forward_fused(x, pending, cos, sin)
        y, _ = add_norm(self.ln_f, pending, x)
        return y
