"""Pure-torch references for the fused kernels: the single source of truth.

Tests compare the Triton kernels against these (evaluated in float64 as the oracle), benchmarks use
them as the "torch" baseline, and the dispatch in each op file runs them on CPU when the Triton
interpreter is off. They must not import the kernel files (rmsnorm.py / swiglu.py) so that those
files can import this one without a cycle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm y = x * rsqrt(mean(x^2, -1) + eps) * w, statistics in fp32 (or fp64), y in x.dtype.

    Args:
        x: (..., N) float tensor.
        w: (N,) weight, fp32 or x.dtype.
        eps: added to the mean square before the rsqrt.
    """
    # Compute in at least fp32 so low-precision inputs get fp32 statistics, exactly like the kernel;
    # float64 inputs stay float64 so the same function serves as the test oracle.
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(cdt)
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * rstd * w.to(cdt)).to(x.dtype)


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU silu(gate) * up computed in fp32 (fp64 for fp64 inputs), output in the input dtype.

    Args:
        gate: (...) float tensor.
        up: same shape and dtype as gate.
    """
    cdt = torch.float64 if gate.dtype == torch.float64 else torch.float32
    return (F.silu(gate.to(cdt)) * up.to(cdt)).to(gate.dtype)


from .adamw import adamw_ref  # noqa: E402,F401
