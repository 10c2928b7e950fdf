"""The optimizer the trainer and bench share: `kernels.FusedAdamW` with the seed's decay grouping.

Decay applies to `nn.Linear` weights only; norms, embeddings and a head tied to the embedding
are not decayed (spec/seeds.md §1.7, `get_parameter_group_specs`).
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[{decayed matrices}, {everything else}] with each parameter exactly once."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids = {
        id(m.weight)
        for m in model.modules()
        # a head tied to the embedding stays undecayed
        if isinstance(m, nn.Linear) and id(m.weight) not in embedding_ids
    }
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    seen: set[int] = set()
    for p in model.parameters():  # parameters() already de-duplicates tied weights
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if id(p) in decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    beta1: float,
    beta2: float,
    eps: float = 1e-8,
    average: str | None = None,
    wa_interval: int = 5,
    wa_horizon: int = 500,
    ema_decay: float = 0.999,
):
    """A `kernels.FusedAdamW` over `model` (unwrap DDP/compile first so names match)."""
    from kernels import FusedAdamW  # imported here so `train.schedules`/`train.data` users skip it

    return FusedAdamW(
        param_groups(model, weight_decay),
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        average=average,
        average_interval=wa_interval,
        average_horizon=wa_horizon,
        ema_decay=ema_decay,
    )
