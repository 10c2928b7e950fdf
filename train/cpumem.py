"""Keep freed CPU memory in the process, so a CPU training step does not re-fault its pages.

PyTorch's CPU allocator takes tensor memory from the C library's malloc. glibc serves blocks above
its mmap threshold (128 KiB at first, then adjusted as blocks are freed) with a fresh mmap and
returns them to the kernel on free, and trims the heap's top when enough is free. A training step
frees and re-allocates the same activations and gradients every step, so each step pays page
faults and the kernel's zeroing of the pages, and how much it pays depends on the heap's history
in that process. On this project's 2-core CPU box that made one config's step 47-51 ms in some
processes and 77-108 ms in others (L6 d192 b2 T32; `examples/cpu_sweep/PROVENANCE.md`), and the
noise of a sweep was mostly this.

`keep_freed_memory()` tells glibc (mallopt, glibc's malloc.h) to never serve a block by mmap and
never trim the heap: after the first step every allocation is recycled from the heap, the way
PyTorch's CPU tuning guide gets it by preloading jemalloc or tcmalloc ("Performance Tuning Guide",
pytorch.org/tutorials/recipes/recipes/tuning_guide.html, "Switch Memory allocator"). The price is
that the process keeps its peak memory until it exits, which a training run does anyway.
Elsewhere (no glibc: macOS, musl, Windows) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters, glibc malloc/malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to recycle freed memory in-process; True if it took effect.

    Idempotent; call it before the model is built. A C library without mallopt leaves this a
    no-op returning False (the allocator is then the platform's, as it was)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. The trim threshold is an int: its max disables trimming.
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _done = bool(ok)
    return _done


def mode() -> str:
    """How this process's malloc treats freed memory: `recycle` (set here) or `system`."""
    return "recycle" if _done else "system"
