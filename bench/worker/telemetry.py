"""GPU telemetry sampled by pynvml in a background thread while the timed steps run.

Columns: power mean/max (W), energy (J, integrated from samples), SM/memory clocks (MHz, mean),
temperature (C, max), utilisation (%, mean) and the OR of clock-throttle reasons seen. On CPU,
or without NVML, every column is NaN, so the schema is the same on every machine.
"""

from __future__ import annotations

import math
import threading
import time

COLUMNS = (
    "gpu_power_mean_w",
    "gpu_power_max_w",
    "gpu_energy_j",
    "gpu_sm_clock_mhz",
    "gpu_mem_clock_mhz",
    "gpu_temp_max_c",
    "gpu_util_mean",
    "gpu_throttle_reasons",
)


def empty() -> dict:
    return {c: math.nan for c in COLUMNS}


class Telemetry:
    """Context manager: `with Telemetry(index) as t: ...; t.summary()`."""

    def __init__(self, device_index: int | None, interval_s: float = 0.05) -> None:
        self.device_index = device_index
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float, float, float, float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None

    def __enter__(self) -> Telemetry:
        if self.device_index is None:
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception:  # noqa: BLE001  (no NVML: columns stay NaN)
            return self
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        nv, h = self._nvml, self._handle
        while not self._stop.is_set():
            try:
                self.samples.append(
                    (
                        time.perf_counter(),
                        nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                        nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                        nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
                        nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                        nv.nvmlDeviceGetUtilizationRates(h).gpu,
                        nv.nvmlDeviceGetCurrentClocksThrottleReasons(h),
                    )
                )
            except Exception:  # noqa: BLE001
                pass
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def summary(self) -> dict:
        s = self.samples
        if not s:
            return empty()
        n = len(s)
        energy = sum((s[i + 1][0] - s[i][0]) * (s[i][1] + s[i + 1][1]) / 2 for i in range(n - 1))
        throttle = 0
        for x in s:
            throttle |= int(x[6])
        return {
            "gpu_power_mean_w": sum(x[1] for x in s) / n,
            "gpu_power_max_w": max(x[1] for x in s),
            "gpu_energy_j": energy,
            "gpu_sm_clock_mhz": sum(x[2] for x in s) / n,
            "gpu_mem_clock_mhz": sum(x[3] for x in s) / n,
            "gpu_temp_max_c": max(x[4] for x in s),
            "gpu_util_mean": sum(x[5] for x in s) / n,
            "gpu_throttle_reasons": throttle,
        }
