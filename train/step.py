"""One optimizer step (gradient accumulation, data-parallel gradient averaging, global-norm
clipping, fp16 loss scaling) and evaluation.

Shared by the trainer loop and `bench`, so a benchmarked step is the step that trains. A step does
no host synchronisation: the loss and the gradient norm come back as 0-dim device tensors, and the
caller reads them only when it logs. Gradients accumulate straight into the optimizer's flat grad
buffers (`zero_grad(set_to_none=False)` keeps every `p.grad` a view of them), and with several
processes those buffers are all-reduced in place once per step: data parallelism without a DDP
wrapper and without a gradient copy.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class StepStats:
    loss: torch.Tensor  # 0-dim device tensor: mean training loss over this rank's micro-batches
    grad_norm: torch.Tensor | None  # 0-dim device tensor: global gradient norm before clipping


def _autocast(model_device: torch.device, dtype: torch.dtype | None):
    # Autocast only on CUDA: on the CPU, bf16 matmuls are slow and the references run in fp32.
    if dtype is None or model_device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _all_reduce_grads(optimizer) -> None:
    """Sum the gradients over processes (each backward already divided by the world size)."""
    if hasattr(optimizer, "grad_buffers"):
        for buf in optimizer.grad_buffers():  # one flat buffer per group: zero copy
            dist.all_reduce(buf)
        return
    for group in optimizer.param_groups:  # an optimizer without flat buffers (e.g. SFAdamW)
        for p in group["params"]:
            if p.grad is not None:
                dist.all_reduce(p.grad)


def train_step(
    model: nn.Module,
    optimizer,
    micro_batches,
    *,
    lr: float,
    grad_clip: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    scaler=None,
    world_size: int = 1,
) -> StepStats:
    """Accumulate gradients over `micro_batches` [(x, y), ...] and take one step at `lr`.

    `grad_clip` None: the optimizer clips by itself (FusedAdamW's `max_grad_norm`, with the fp16
    `scaler`'s unscale fused in); a number: clip to it here first (0 = measure only).
    `world_size` > 1: gradients are averaged over the processes of the default process group.
    """
    micro_batches = list(micro_batches)
    n = len(micro_batches)
    if n == 0:
        raise ValueError("train_step needs at least one micro-batch")
    for group in optimizer.param_groups:
        group["lr"] = lr
    if hasattr(optimizer, "train"):  # schedule-free optimizers evaluate at other weights
        optimizer.train()
    device = _device_of(model)
    total = torch.zeros((), device=device)
    for x, y in micro_batches:
        with _autocast(device, autocast_dtype):
            _, loss = model(x, targets=y)
        scaled = loss / (n * world_size)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss.detach().float()
    if world_size > 1:
        _all_reduce_grads(optimizer)
    grad_norm = _clip_and_step(optimizer, model, grad_clip, scaler)
    optimizer.zero_grad(set_to_none=False)
    return StepStats(loss=total / n, grad_norm=grad_norm)


def _clip_and_step(optimizer, model: nn.Module, grad_clip: float | None, scaler):
    """Clip (or let FusedAdamW clip inside its step) and step; the pre-clip norm or None."""
    bound = math.inf if not grad_clip else grad_clip
    kw = {} if scaler is None else {"scaler": scaler}
    if hasattr(optimizer, "clip_grad_norm_"):  # FusedAdamW: norm and clip fused, no host sync
        if grad_clip is not None:
            norm = optimizer.clip_grad_norm_(bound, **kw)
            optimizer.step(**kw)
            return norm
        measured = scaler is not None or getattr(optimizer, "max_grad_norm", None) is not None
        optimizer.step(**kw)
        return optimizer.last_grad_norm if measured else None
    if scaler is not None:
        raise ValueError("fp16 loss scaling needs FusedAdamW")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), bound)
    optimizer.step()
    return norm


@torch.no_grad()
def evaluate(
    model: nn.Module, batches, autocast_dtype: torch.dtype | None = None, optimizer=None
) -> float:
    """Mean loss over `batches` [(x, y), ...] in eval mode (one host read); restores the mode."""
    was_training = model.training
    model.eval()
    if hasattr(optimizer, "eval"):  # schedule-free: evaluate at its averaged point
        optimizer.eval()
    device = _device_of(model)
    total, count = torch.zeros((), device=device), 0
    try:
        for x, y in batches:
            with _autocast(device, autocast_dtype):
                _, loss = model(x, targets=y)
            total += loss.float()
            count += 1
    finally:
        model.train(was_training)
        if hasattr(optimizer, "train"):
            optimizer.train()
    if count == 0:
        raise ValueError("evaluate needs at least one batch")
    return float(total) / count
