"""Shared helpers for the kernel files: backend dispatch and input checks."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(*tensors: torch.Tensor) -> bool:
    """Dispatch rule: CUDA tensors run Triton; CPU tensors run Triton only under the interpreter.

    Otherwise the torch references in `kernels.reference` run (the CPU fast path).
    """
    devs = {t.device.type for t in tensors}
    if devs == {"cuda"}:
        return True
    if devs == {"cpu"}:
        return interpreting()
    return False
