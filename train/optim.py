"""The optimizer the trainer and bench share: `kernels.FusedAdamW` with the seed's decay grouping.

Decay applies to `nn.Linear` weights only; biases, norms, embeddings and a head tied to the
embedding are not decayed (upstream epfml/schedules-and-scaling `src/models/utils.py`,
`get_parameter_group_specs`). `--opt SFAdamW` builds the schedule-free AdamW of Defazio et al. 2024
(arXiv:2405.15682) from the optional `schedulefree` package, as the seed's `src/main.py` does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core import UserError


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
    swa: bool = False,
    swa_interval: int = 5,
    swa_horizon: int = 500,
    ema: bool = False,
    ema_decay: float | None = None,  # required with ema (the one default is --ema-decay's)
    ema_interval: int = 10,
    ema_start: int = 0,
    max_grad_norm: float | None = None,
):
    """A `kernels.FusedAdamW` over `model` (unwrap compile first so parameters match)."""
    from kernels import FusedAdamW  # imported here so `train.schedules`/`train.data` users skip it

    kw = {}
    if swa:
        kw.update(swa=True, swa_interval=swa_interval, swa_horizon=swa_horizon)
    if ema:
        kw.update(ema=True, ema_decay=ema_decay, ema_interval=ema_interval, ema_start=ema_start)
    return FusedAdamW(
        param_groups(model, weight_decay),
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        **kw,
    )


def optimizer_for(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimizer a TrainConfig asks for. FusedAdamW clips inside `step()` (every step measures
    the global norm: a clip of 0 means an infinite bound, as the seed skips clipping at 0)."""
    o, a, s = cfg.optim, cfg.averaging, cfg.schedule
    if o.opt == "SFAdamW":
        try:
            import schedulefree
        except ImportError:
            raise UserError(
                "--opt SFAdamW needs the optional package schedulefree: pip install schedulefree"
            ) from None
        return schedulefree.AdamWScheduleFree(
            param_groups(model, o.weight_decay),
            lr=s.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
            warmup_steps=s.warmup_steps,
        )
    return build_optimizer(
        model,
        lr=s.lr,
        weight_decay=o.weight_decay,
        beta1=o.beta1,
        beta2=o.beta2,
        eps=o.eps,
        swa=a.weight_average,
        swa_interval=a.wa_interval,
        swa_horizon=a.wa_horizon,
        ema=a.exponential_moving_average,
        ema_decay=a.ema_decay,
        ema_interval=a.ema_interval,
        ema_start=s.warmup_steps if a.ema_after_warmup else 0,
        max_grad_norm=o.grad_clip if o.grad_clip > 0 else math.inf,
    )
