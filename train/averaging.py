"""Weight averages evaluated beside the raw weights: window SWA, sweep horizons, and EMA.

The running window average and the EMA are kept by `kernels.FusedAdamW` in the same kernel pass as
the update (pass `optimizer=`): this class then only snapshots the optimizer's window average when a
window completes (for the last-k sweep) and evaluates. When both SWA and EMA are asked for, the
optimizer holds one kind (SWA) and the EMA falls back to a separate foreach pass here, since one
optimizer buffer can hold one average. Without `optimizer=` (or for the fallback) the averages are
kept here with the same definitions.

Semantics follow the seed (spec/seeds.md §1.5): after optimizer step number `count` (0-based),
if `count % interval == 0` the window average moves toward the weights with rate
1/((count % horizon)//interval + 1) (a uniform mean that resets at each window start); when
`count + 1` is a multiple of `horizon` the window is complete and a snapshot is kept. Unlike the
seed, snapshots stay in memory (the last `max_windows`), so nothing is written unless asked, and
EMA stays fp32 (the seed's EMA silently drops to bf16 after its first eval).
"""

from __future__ import annotations

import os
from collections import deque

import torch
from torch import nn


class WeightAverager:
    """Window SWA (+ last-k window sweeps) and EMA over a model's parameters, in fp32."""

    def __init__(
        self,
        model: nn.Module,
        *,
        swa: bool = False,
        interval: int = 5,
        horizon: int = 500,
        max_windows: int = 1,
        ema: bool = False,
        ema_decay: float = 0.95,
        ema_interval: int = 10,
        count: int = 0,
        optimizer=None,
    ) -> None:
        if swa and (interval <= 0 or horizon <= 0 or horizon % interval):
            raise ValueError(f"wa interval {interval} must divide wa horizon {horizon}")
        if ema and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {ema_decay}")
        if ema and ema_interval <= 0:
            raise ValueError(f"ema interval must be > 0, got {ema_interval}")
        self.names = [n for n, _ in model.named_parameters()]
        kind = None
        if optimizer is not None:
            kinds = {g.get("average") for g in optimizer.param_groups}
            kind = kinds.pop() if len(kinds) == 1 else None
        self.opt = optimizer
        self.swa_fused = swa and kind == "swa"  # the window average lives in the optimizer
        self.ema_fused = ema and not swa and kind == "ema"
        self.params = list(model.parameters())
        self.swa, self.interval, self.horizon = swa, interval, horizon
        self.max_windows = max(1, max_windows)
        self.ema, self.ema_decay, self.ema_interval = ema, ema_decay, ema_interval
        self.count = count
        params = [p.detach() for p in model.parameters()]
        self.window = [p.float().clone() for p in params] if swa and not self.swa_fused else []
        self.windows: deque[tuple[int, list[torch.Tensor]]] = deque(maxlen=self.max_windows)
        self.ema_params = [p.float().clone() for p in params] if ema and not self.ema_fused else []

    @property
    def enabled(self) -> bool:
        return self.swa or self.ema

    @torch.no_grad()
    def update(self, model: nn.Module) -> int | None:
        """Call once after each optimizer step; returns the step count when a window completed."""
        params = [p.detach().float() for p in model.parameters()]
        done = None
        if self.swa and not self.swa_fused and self.count % self.interval == 0:
            rate = 1.0 / ((self.count % self.horizon) // self.interval + 1)
            torch._foreach_lerp_(self.window, params, rate)
        if self.ema and not self.ema_fused and self.count % self.ema_interval == 0:
            torch._foreach_lerp_(self.ema_params, params, 1.0 - self.ema_decay)
        self.count += 1
        if self.swa and self.count % self.horizon == 0:
            window = self._fused_window() if self.swa_fused else self.window
            self.windows.append((self.count, [w.clone() for w in window]))
            done = self.count
        return done

    def averages(self, sweep: bool) -> dict[str, list[torch.Tensor]]:
        """Weight sets to evaluate: "swa" (latest window), "swa_k{k}" (last k windows), "ema"."""
        out: dict[str, list[torch.Tensor]] = {}
        if self.swa and self.windows:
            out["swa"] = self.windows[-1][1]
            if sweep:
                snaps = [w for _, w in self.windows]
                for k in range(1, len(snaps) + 1):
                    chosen = snaps[-k:]
                    out[f"swa_k{k}"] = [
                        torch.stack([s[i] for s in chosen]).mean(0) for i in range(len(chosen[0]))
                    ]
        if self.ema:
            out["ema"] = self._fused_window() if self.ema_fused else self.ema_params
        return out

    def _fused_window(self) -> list[torch.Tensor]:
        """The optimizer's running average of every parameter (views into its flat buffers)."""
        return [self.opt.averaged(p).detach() for p in self.params]

    def save_window(self, path: str) -> None:
        """Write the latest completed window (fp32 state dict) atomically."""
        count, weights = self.windows[-1]
        tmp = path + ".tmp"
        torch.save(dict(zip(self.names, weights)) | {"_count": count}, tmp)
        os.replace(tmp, path)

    def state_dict(self) -> dict:
        return {
            "count": self.count,
            "window": self.window,
            "windows": [[c, w] for c, w in self.windows],
            "ema": self.ema_params,
        }

    def load_state_dict(self, sd: dict) -> None:
        self.count = int(sd["count"])
        if self.swa and self.swa_fused:
            # The running window is in the optimizer's state; only completed windows live here.
            self.windows.clear()
            for c, w in sd.get("windows", [])[-self.max_windows :]:
                self.windows.append((int(c), [t.clone() for t in w]))
        elif self.swa:
            if not sd["window"]:
                raise ValueError("checkpoint has no SWA state but --weight-average is on")
            self.window = [t.clone() for t in sd["window"]]
            self.windows.clear()
            for c, w in sd["windows"][-self.max_windows :]:
                self.windows.append((int(c), [t.clone() for t in w]))
        if self.ema and not self.ema_fused:
            if not sd["ema"]:
                raise ValueError("checkpoint has no EMA state but EMA is on")
            self.ema_params = [t.clone() for t in sd["ema"]]


@torch.no_grad()
def swap_in(model: nn.Module, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copy `weights` into the model, returning the previous values for `swap_in` back."""
    old = [p.detach().clone() for p in model.parameters()]
    for p, w in zip(model.parameters(), weights):
        p.copy_(w.to(p.dtype))
    return old
