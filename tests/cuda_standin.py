"""A strict stand-in for the parts of `torch.cuda` steptime calls, so CUDA-only branches run in CI.

The machine CI runs on has no GPU, yet `train`, the sweep worker and `bench kernels` have lines that
run only on CUDA; the first real GPU run found one of them broken (`torch.cuda.set_device` refuses
a `torch.device("cuda")` without an index). Under this stand-in those lines execute on the CPU:

- `torch.cuda.*` answers as a machine with `n` GPUs would, and checks its arguments as torch does:
  `set_device` takes an int or a cuda device *with* an index; `Event.elapsed_time` needs both events
  created with `enable_timing=True` and recorded; device indices must exist. Every call is logged
  in `calls` so a test can assert what ran.
- Tensors and modules sent to a cuda device stay on the CPU (`.to`, factory `device=` arguments,
  `pin_memory`, `torch.load(map_location=)`, `torch.Generator(device=)`), so the rest of the step
  runs for real: only placement is faked.

Tests only: the package never imports this.
"""

from __future__ import annotations

import time
import types
from typing import Any

import torch

NAME = "NVIDIA H100 80GB HBM3"  # a name model.costs knows the peak of (so MFU is computed)


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


def _cpu_device(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if _is_cuda(kwargs.get("device")):
        kwargs = {**kwargs, "device": "cpu"}
    args = tuple("cpu" if _is_cuda(a) else a for a in args)
    return args, kwargs


class StrictEvent:
    """torch.cuda.Event: elapsed_time needs enable_timing on both events, both recorded."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess=False):
        self.enable_timing, self.t = bool(enable_timing), None

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        if self.t is None:
            raise RuntimeError("synchronize on an event that was never recorded")

    def query(self) -> bool:
        return self.t is not None

    def elapsed_time(self, end: StrictEvent) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self.t is None or end.t is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return (end.t - self.t) * 1e3


class CudaStandIn:
    """Install with `install(monkeypatch)`; `calls` logs (name, args) of every torch.cuda call."""

    def __init__(self, n: int = 2, name: str = NAME) -> None:
        self.n, self.name, self.current, self.calls = n, name, 0, []
        self.peak_resets: list[int] = []

    # ----------------------------------------------------------------------------- checks
    def _index(self, device: Any, fn: str, *, optional: bool = True) -> int:
        """The device index torch would use, refusing what torch refuses."""
        if device is None and optional:
            return self.current
        if isinstance(device, int) and not isinstance(device, bool):
            index = device
        elif isinstance(device, (str, torch.device)):
            d = torch.device(device)
            if d.type != "cuda":
                raise ValueError(f"Expected a cuda device, but got: {d}")
            if d.index is None:
                if not optional:
                    raise ValueError(
                        f"Expected a torch.device with a specified index or an integer, but got:{d}"
                    )
                index = self.current
            else:
                index = d.index
        else:
            raise TypeError(f"{fn}: invalid device {device!r}")
        if not 0 <= index < self.n:
            raise RuntimeError(f"CUDA error: invalid device ordinal ({fn}({index}))")
        return index

    # ------------------------------------------------------------------------ torch.cuda API
    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.n

    def current_device(self) -> int:
        return self.current

    def set_device(self, device) -> None:
        self.calls.append(("set_device", device))
        self.current = self._index(device, "set_device", optional=False)

    def get_device_name(self, device=None) -> str:
        self._index(device, "get_device_name")
        return self.name

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak_resets.append(self._index(device, "reset_peak_memory_stats"))

    def max_memory_allocated(self, device=None) -> int:
        self._index(device, "max_memory_allocated")
        return 123 * 2**20

    def synchronize(self, device=None) -> None:
        self._index(device, "synchronize")

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return True

    def get_device_properties(self, device=None):
        index = self._index(device, "get_device_properties")
        return types.SimpleNamespace(
            name=self.name,
            index=index,
            total_memory=80 * 2**30,
            multi_processor_count=132,
            major=9,
            minor=0,
        )

    # ---------------------------------------------------------------------------- install
    def install(self, monkeypatch) -> CudaStandIn:
        for name in (
            "is_available",
            "device_count",
            "current_device",
            "set_device",
            "get_device_name",
            "reset_peak_memory_stats",
            "max_memory_allocated",
            "synchronize",
            "is_bf16_supported",
            "get_device_properties",
        ):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "Event", StrictEvent)
        real_tensor_to, real_module_to = torch.Tensor.to, torch.nn.Module.to

        def tensor_to(t, *args, **kwargs):
            moved = any(_is_cuda(a) for a in args) or _is_cuda(kwargs.get("device"))
            args, kwargs = _cpu_device(args, kwargs)
            kwargs.pop("non_blocking", None)
            out = real_tensor_to(t, *args, **kwargs)
            # a device copy is a copy: a strided view arrives dense (preserve_format's rule)
            return out.clone(memory_format=torch.preserve_format) if moved and out is t else out

        def module_to(m, *args, **kwargs):
            args, kwargs = _cpu_device(args, kwargs)
            return real_module_to(m, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", tensor_to)
        monkeypatch.setattr(torch.nn.Module, "to", module_to)
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: t)
        real_load, real_generator = torch.load, torch.Generator

        def load(*args, **kwargs):
            if _is_cuda(kwargs.get("map_location")):
                kwargs["map_location"] = "cpu"
            return real_load(*args, **kwargs)

        class generator(real_generator):  # noqa: N801  (stands in for the class torch.Generator)
            def __new__(cls, device="cpu"):
                return real_generator(device="cpu" if _is_cuda(device) else device)

        monkeypatch.setattr(torch, "load", load)
        monkeypatch.setattr(torch, "Generator", generator)
        for fn in ("full", "tensor", "zeros", "ones", "empty", "arange", "randint", "as_tensor"):
            real = getattr(torch, fn)

            def factory(*args, _real=real, **kwargs):
                args, kwargs = _cpu_device(args, kwargs)
                return _real(*args, **kwargs)

            monkeypatch.setattr(torch, fn, factory)
        return self
