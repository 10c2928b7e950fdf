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


# sm_90 (H100 SXM) per-SM limits: CUDA C Programming Guide, "Compute Capabilities", Table 21.
H100_SMS = 132
SM90_LIMITS = {
    "regs": 65536,  # 32-bit registers per SM
    "threads": 2048,  # resident threads per SM
    "ctas": 32,  # resident blocks per SM
    "shared": 228 * 1024,  # shared memory per SM (bytes)
}
_REG_UNIT = 256  # registers are allocated per warp in units of 256
_SHARED_RESERVED = 1024  # bytes the driver reserves per resident block (sm_80+)


def ctas_per_sm(regs: int, shared: int, num_warps: int, limits: dict | None = None) -> int:
    """Blocks of one kernel that fit on an SM at once, given its registers per thread, static
    shared memory per block and warps per block (the CUDA occupancy calculator's rules)."""
    lim = SM90_LIMITS if limits is None else limits
    regs_per_warp = -(-max(regs, 1) * 32 // _REG_UNIT) * _REG_UNIT
    by_regs = (lim["regs"] // regs_per_warp) // num_warps
    by_threads = lim["threads"] // (32 * num_warps)
    by_shared = lim["shared"] // (shared + _SHARED_RESERVED)
    return max(1, min(by_regs, by_threads, by_shared, lim["ctas"]))
