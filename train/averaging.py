"""Weight averages evaluated beside the raw weights: window SWA, last-k window sweeps, and EMA.

`kernels.FusedAdamW` is the only owner of running averages: it updates the SWA window mean and the
EMA in the same kernel pass as the AdamW update (both at once when both are on). This module only
snapshots the optimizer's window average when a window completes (for the last-k sweep and for
`--wa-save-windows`) and lists the weight sets to evaluate.

Window semantics follow the seed code of Hägele et al. 2024 (arXiv:2405.18392, §4.1; upstream
`src/optim/weight_averaging.py`): the mean restarts every `horizon` steps, so after optimizer step
number `count` with `count % horizon == 0` a window has completed. Unlike the seed, snapshots stay
in memory (the last `max_windows`), so nothing is written unless asked, and EMA stays fp32.
"""

from __future__ import annotations

import sys
from collections import deque

import torch
from torch import nn

from core import atomic_write


class WindowSnapshots:
    """Completed SWA windows (copies of the optimizer's window mean) and the sets to evaluate."""

    def __init__(
        self,
        model: nn.Module,
        optimizer,
        *,
        swa: bool = False,
        horizon: int = 500,
        max_windows: int = 1,
        ema: bool = False,
    ) -> None:
        if swa and horizon <= 0:
            raise ValueError(f"wa horizon must be > 0, got {horizon}")
        self.names = [n for n, _ in model.named_parameters()]
        self.params = list(model.parameters())
        self.opt = optimizer
        self.swa, self.ema, self.horizon = swa, ema, horizon
        self.windows: deque[tuple[int, list[torch.Tensor]]] = deque(maxlen=max(1, max_windows))

    @property
    def enabled(self) -> bool:
        return self.swa or self.ema

    def running(self, kind: str) -> list[torch.Tensor]:
        """The optimizer's running average of every parameter (views into its flat buffers)."""
        return [self.opt.averaged(p, kind).detach() for p in self.params]

    @torch.no_grad()
    def update(self, steps_done: int) -> bool:
        """Call after each optimizer step; True when a window completed (and was snapshotted)."""
        if not self.swa or steps_done % self.horizon:
            return False
        self.windows.append((steps_done, [w.clone() for w in self.running("swa")]))
        return True

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
            out["ema"] = self.running("ema")
        return out

    def save_window(self, path: str) -> None:
        """Write the latest completed window (fp32 state dict) atomically."""
        count, weights = self.windows[-1]
        sd = dict(zip(self.names, weights)) | {"_count": count}
        atomic_write(path, lambda fh: torch.save(sd, fh))

    def state_dict(self) -> dict:
        return {"windows": [[c, w] for c, w in self.windows]}

    def load_state_dict(self, sd: dict) -> None:
        self.windows.clear()
        for c, w in (sd or {}).get("windows", [])[-self.windows.maxlen :]:
            if len(w) != len(self.params):
                raise ValueError("checkpoint's averaging windows do not match this model")
            self.windows.append((int(c), [t.clone() for t in w]))


@torch.no_grad()
def swap_in(model: nn.Module, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copy `weights` into the model, returning the previous values for `swap_in` back."""
    old = [p.detach().clone() for p in model.parameters()]
    for p, w in zip(model.parameters(), weights):
        p.copy_(w.to(p.dtype))
    return old


def warn_window_files(a, n_params: int, step: int, end: int, out: str) -> None:
    """--wa-save-windows: say on stderr how many window files (and GB) steps step..end write."""
    n_files = max(0, end // a.wa_horizon - step // a.wa_horizon)
    mb = n_params * 4 / 2**20  # windows are stored in fp32
    print(
        f"warning: --wa-save-windows writes {n_files} window file(s) of {mb:.1f} MB each "
        f"({n_files * mb / 1024:.2f} GB) to {out}/avgs",
        file=sys.stderr,
    )
