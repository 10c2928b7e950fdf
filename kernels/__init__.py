"""Fused Triton kernels: RMSNorm (alone and with the residual add fused in), SwiGLU, linear +
cross-entropy over the vocabulary in chunks, and AdamW with fused clipping, loss scaling and
averaging.

CUDA tensors run Triton; CPU tensors run Triton under TRITON_INTERPRET=1 and the pure-torch
references in `kernels.reference` otherwise (see `kernels._utils.use_triton`). Importing this
package (or `kernels.reference`) imports torch only: triton is imported by the `_*_kernels`
modules, on the first call that runs a Triton kernel, and by `register_ops` (the
``torch.library.triton_op`` registrations torch.compile traces), so a torch-backend model never
needs it.
"""

from . import reference
from .adamw import DynamicLossScaler, FusedAdamW
from .add_rmsnorm import add_rms_norm
from .cross_entropy import linear_cross_entropy
from .rmsnorm import rms_norm
from .swiglu import swiglu

__all__ = [
    "DynamicLossScaler",
    "FusedAdamW",
    "add_rms_norm",
    "linear_cross_entropy",
    "reference",
    "register_ops",
    "rms_norm",
    "swiglu",
]


def register_ops(only_if_usable: bool = False) -> None:
    """Register the ``steptime::`` ops for torch.compile (imports triton; done once). The first
    Triton call of an op registers its own; a kernels="triton" model calls this when built, so
    that compiling it never meets an unregistered op. ``only_if_usable``: do nothing unless
    Triton can run here (a CUDA device, or TRITON_INTERPRET=1)."""
    import importlib

    import torch

    from ._utils import interpreting

    if only_if_usable and not (torch.cuda.is_available() or interpreting()):
        return
    for name in ("rmsnorm", "swiglu", "add_rmsnorm", "cross_entropy"):
        importlib.import_module(f"{__name__}.{name}")._ops()
