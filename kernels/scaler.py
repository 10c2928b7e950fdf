"""Dynamic loss scaling for fp16 whose unscale, inf/NaN skip and scale update run inside FusedAdamW.

Micikevicius et al. 2018, "Mixed Precision Training" (arXiv:1710.03740), Sect. 3.2, with the
semantics of torch.amp.GradScaler (torch/amp/grad_scaler.py): the loss is multiplied by the scale
before backward; a step whose grads hold inf/NaN is skipped and the scale is multiplied by
``backoff_factor``; after ``growth_interval`` clean steps in a row it is multiplied by
``growth_factor``. Unlike GradScaler nothing here reads a value back to the host:
``FusedAdamW.step(scaler=...)`` folds 1/scale into the clip coefficient, masks the update off on
the device when the grads are not finite, and updates the scale with the same kernel that computes
the grad norm. There is therefore no ``unscale_``/``update`` to call.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class DynamicLossScaler:
    """On-device loss scale (fp32) and growth tracker (int32), torch.amp.GradScaler semantics.

    Args:
        device: where the scale lives (the params' device).
        init_scale: the first scale.
        growth_factor: scale multiplier after ``growth_interval`` clean steps (> 1).
        backoff_factor: scale multiplier on a step with inf/NaN grads (in (0, 1)).
        growth_interval: clean steps in a row before growing.
    """

    def __init__(
        self,
        device: torch.device | str,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        _check(init_scale, growth_factor, backoff_factor, growth_interval)
        self.device = torch.device(device)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._scale = torch.full((1,), float(init_scale), dtype=torch.float32, device=self.device)
        self._growth_tracker = torch.zeros(1, dtype=torch.int32, device=self.device)
        self.device = self._scale.device  # "cuda" -> "cuda:0", to compare with the params'

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """loss * scale in fp32 (fp64 stays), same shape as loss; backward gives scaled grads."""
        base = loss if loss.dtype == torch.float64 else loss.float()  # 2**16 overflows fp16
        return base * self._scale.view(())

    def get_scale(self) -> torch.Tensor:
        """The current scale as a 0-dim device tensor (no host sync)."""
        return self._scale.view(())

    def update_ref(self, found_inf: torch.Tensor) -> None:
        """The scale update in torch ops (the CPU path; the Triton path fuses it)."""
        torch._amp_update_scale_(
            self._scale,
            self._growth_tracker,
            found_inf,
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        )

    def state_dict(self) -> dict[str, Any]:
        """GradScaler's keys; reads the scale back to the host (call it at checkpoints only)."""
        return {
            "scale": float(self._scale.item()),
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "_growth_tracker": int(self._growth_tracker.item()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"scale", "_growth_tracker"} - set(state)
        if missing:
            raise ValueError(
                f"loss-scaler state lacks {sorted(missing)}; pass DynamicLossScaler.state_dict() "
                "(or torch.amp.GradScaler.state_dict())"
            )
        growth = state.get("growth_factor", self.growth_factor)
        backoff = state.get("backoff_factor", self.backoff_factor)
        interval = state.get("growth_interval", self.growth_interval)
        _check(state["scale"], growth, backoff, interval)
        self.growth_factor, self.backoff_factor = float(growth), float(backoff)
        self.growth_interval = int(interval)
        self._scale.fill_(float(state["scale"]))
        self._growth_tracker.fill_(int(state["_growth_tracker"]))


def _check(init_scale: float, growth: float, backoff: float, interval: int) -> None:
    if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0):
        raise ValueError(f"init_scale must be a finite number > 0, got {init_scale!r}")
    if not (isinstance(growth, (int, float)) and math.isfinite(growth) and growth > 1.0):
        raise ValueError(f"growth_factor must be a finite number > 1, got {growth!r}")
    if not (isinstance(backoff, (int, float)) and 0.0 < backoff < 1.0):
        raise ValueError(f"backoff_factor must be in (0, 1), got {backoff!r}")
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise ValueError(f"growth_interval must be a positive int, got {interval!r}")
