"""One optimizer step (gradient accumulation, global-norm clipping) and evaluation.

Shared by the trainer loop and `bench`, so a benchmarked step is the step that trains.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class StepStats:
    loss: float  # mean training loss over the step's micro-batches (and ranks)
    grad_norm: float  # global gradient norm before clipping


def _autocast(model_device: torch.device, dtype: torch.dtype | None):
    # Autocast only on CUDA: on the CPU, bf16 matmuls are slow and the references run in fp32.
    if dtype is None or model_device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_step(
    model: nn.Module,
    optimizer,
    micro_batches,
    *,
    lr: float,
    grad_clip: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> StepStats:
    """Accumulate gradients over `micro_batches` [(x, y), ...], clip, and take one step at `lr`."""
    micro_batches = list(micro_batches)
    n = len(micro_batches)
    if n == 0:
        raise ValueError("train_step needs at least one micro-batch")
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = _device_of(model)
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        # DDP all-reduces on every backward unless told otherwise; only the last one needs it.
        sync = i == n - 1 or not hasattr(model, "no_sync")
        ctx = contextlib.nullcontext() if sync else model.no_sync()
        with ctx:
            with _autocast(device, autocast_dtype):
                _, loss = model(x, targets=y)
            (loss / n).backward()
        total += loss.detach().float()
    mean_loss = total / n
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)  # SUM then divide: gloo has no AVG
        mean_loss /= dist.get_world_size()
    # clip_grad_norm_ with an infinite bound measures without clipping (seed: skip if clip == 0).
    grad_norm = optimizer.clip_grad_norm_(grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss=float(mean_loss), grad_norm=float(grad_norm))


@torch.no_grad()
def evaluate(model: nn.Module, batches, autocast_dtype: torch.dtype | None = None) -> float:
    """Mean loss over `batches` [(x, y), ...] in eval mode; restores the previous mode."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    total, count = 0.0, 0
    for x, y in batches:
        with _autocast(device, autocast_dtype):
            _, loss = model(x, targets=y)
        total += float(loss)
        count += 1
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate needs at least one batch")
    return total / count
