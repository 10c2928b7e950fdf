"""Environment columns of a results row: GPU/driver/CUDA, torch/triton versions, git sha, host.

`device_name` is the GPU name on CUDA and the CPU model string (from /proc/cpuinfo) on CPU, so
timemodel can tell rows from different machines apart either way.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def git_sha() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        sha = r.stdout.strip()
        if r.returncode != 0 or not sha:
            return ""
        d = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha + ("-dirty" if d.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def env_info(device: str = "cpu") -> dict:
    """The env columns; GPU ones are empty strings without CUDA."""
    import torch

    info = {
        "gpu_name": "",
        "driver": "",
        "cuda": "",
        "torch": torch.__version__,
        "triton": "",
        "git_sha": git_sha(),
        "host": socket.gethostname(),
        "device_name": cpu_model(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name()
        info["device_name"] = info["gpu_name"]
        info["cuda"] = torch.version.cuda or ""
        try:
            import pynvml

            pynvml.nvmlInit()
            drv = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
        except Exception:  # noqa: BLE001  (NVML missing or failing must not fail the row)
            pass
    return info
