"""Fused Triton kernels: RMSNorm, SwiGLU and AdamW with fused weight averaging.

CUDA tensors run Triton; CPU tensors run Triton under TRITON_INTERPRET=1 and the pure-torch
references in `kernels.reference` otherwise (see `kernels._utils.use_triton`).
"""

from . import reference
from .adamw import FusedAdamW
from .rmsnorm import rms_norm
from .swiglu import swiglu

__all__ = ["FusedAdamW", "reference", "rms_norm", "swiglu"]
