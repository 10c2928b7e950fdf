"""FusedAdamW's bookkeeping (pure torch): flat buffers, hyperparameter checks, averaging schedule.

Kept apart from the optimizer class so each file reads in one sitting; nothing here launches a
kernel or imports triton.
"""

from __future__ import annotations

import math
from typing import Any

import torch

PAD = 1024  # flat buffers are padded to this many elements (a multiple of 16 for vector access)
AVERAGE_KINDS = ("swa", "ema")


class Flat:
    """One group's flat fp32 storage: params, moments, averages, grads, and each param's slice."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.slices: list[tuple[int, int]] = []
        off = 0
        for p in params:
            self.slices.append((off, p.numel()))
            off += p.numel()
        self.n = max(PAD, -(-off // PAD) * PAD)
        dev = params[0].device
        self.param = torch.zeros(self.n, dtype=torch.float32, device=dev)
        self.exp_avg = torch.zeros_like(self.param)
        self.exp_avg_sq = torch.zeros_like(self.param)
        self.avg: dict[str, torch.Tensor] = {}
        self.grad: torch.Tensor | None = None
        self.grad_views: list[torch.Tensor] | None = None

    def view(self, buf: torch.Tensor, i: int, like: torch.Tensor) -> torch.Tensor:
        off, n = self.slices[i]
        return buf[off : off + n].view(like.shape)

    def sync_averages(self, group: dict[str, Any]) -> None:
        """Allocate the averages the group asks for (starting at the params), drop the others."""
        for kind in AVERAGE_KINDS:
            if group[kind] and kind not in self.avg:
                self.avg[kind] = self.param.clone()
            elif not group[kind]:
                self.avg.pop(kind, None)

    def state_views(self, i: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = {
            "exp_avg": self.view(self.exp_avg, i, p),
            "exp_avg_sq": self.view(self.exp_avg_sq, i, p),
        }
        for kind, buf in self.avg.items():
            st[kind] = self.view(buf, i, p)
        return st

    def make_grad_views(self, params: list[torch.Tensor], dtype: torch.dtype) -> None:
        """Point every p.grad at a view of one flat grad buffer, keeping the grads it had."""
        buf = self.grad
        if buf is None or buf.dtype != dtype:
            buf = torch.zeros(self.n, dtype=dtype, device=self.param.device)
        views = [self.view(buf, i, p) for i, p in enumerate(params)]
        with torch.no_grad():
            for p, v in zip(params, views):
                g = p.grad
                if g is None:
                    v.zero_()
                elif g.data_ptr() != v.data_ptr() or g.dtype != dtype:
                    v.copy_(g)
                p.grad = v
        self.grad, self.grad_views = buf, views

    def ln_betas(self, beta1: float, beta2: float) -> torch.Tensor:
        """(ln beta1, ln beta2) in fp64 on the device, rebuilt only when the betas change."""
        key = (beta1, beta2)
        if getattr(self, "lnb_key", None) != key:
            logs = [math.log(b) if b > 0 else -math.inf for b in key]
            self.lnb = torch.tensor(logs, dtype=torch.float64, device=self.param.device)
            self.lnb_key = key
        return self.lnb

    def grads_are_views(self, params: list[torch.Tensor]) -> bool:
        views = self.grad_views
        return views is not None and all(p.grad is v for p, v in zip(params, views))


def _positive_int(g: dict[str, Any], key: str, none_ok: bool = False) -> None:
    v = g[key]
    if none_ok and v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{key} must be a positive int{' or None' if none_ok else ''}, got {v!r}")


def check_hparams(g: dict[str, Any]) -> None:
    """Clear errors (saying which value to fix) for bad hyperparameters, before any kernel runs."""
    lr, eps, wd = g["lr"], g["eps"], g["weight_decay"]
    if isinstance(lr, torch.Tensor):
        raise TypeError("FusedAdamW takes lr as a Python float, not a tensor")
    for key, v in (("lr", lr), ("eps", eps), ("weight_decay", wd)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{key} must be a finite number >= 0, got {v!r}; fix the param group")
    betas = g["betas"]
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two values in [0, 1), got {betas}")
    _positive_int(g, "swa_interval")
    _positive_int(g, "swa_horizon", none_ok=True)
    _positive_int(g, "ema_interval")
    if g["swa_horizon"] is not None and g["swa_horizon"] % g["swa_interval"]:
        raise ValueError(
            f"swa_interval ({g['swa_interval']}) must divide swa_horizon ({g['swa_horizon']})"
        )
    if g["ema"] and g["ema_decay"] is None:
        raise ValueError("ema=True needs ema_decay (the trainer's is --ema-decay)")
    if g["ema_decay"] is not None and not 0.0 <= g["ema_decay"] < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {g['ema_decay']}")
    start = g["ema_start"]
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ValueError(f"ema_start must be an int >= 0, got {start!r}")


def swa_weights(group: dict[str, Any], t: int) -> tuple[float, float] | None:
    """(keep, take) of the SWA window mean after step t (0-based), or None when it does not move.

    Window mean of the iterates every `swa_interval` steps, restarting every `swa_horizon` steps:
    Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima" (arXiv:1803.05407), Alg. 1, with
    the windows of Hägele et al. 2024 (arXiv:2405.18392), Sect. 4.1 (epfml/schedules-and-scaling,
    src/optim/weight_averaging.py): rate 1 / (k + 1), k = (t % horizon) // interval.
    """
    interval = group["swa_interval"]
    if not group["swa"] or t % interval:
        return None
    horizon = group["swa_horizon"]
    k = (t % horizon) // interval if horizon is not None else t // interval
    rate = 1.0 / (k + 1)
    return 1.0 - rate, rate


def ema_weights(group: dict[str, Any], t: int) -> tuple[float, float] | None:
    """(keep, take) of the EMA after step t (0-based), or None: a copy at t == ema_start, then
    avg <- decay * avg + (1 - decay) * p on every step t > ema_start with t % ema_interval == 0."""
    if not group["ema"] or t < group["ema_start"]:
        return None
    if t == group["ema_start"]:
        return 0.0, 1.0
    if t % group["ema_interval"]:
        return None
    d = float(group["ema_decay"])
    return d, 1.0 - d


def check_loadable(state_dict: dict[str, Any]) -> None:
    """Refuse optimizer states that are not FusedAdamW's with a message that says what to do."""
    if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
        raise ValueError("not an optimizer state dict (no 'param_groups'); pass opt.state_dict()")
    foreign = any("step" not in g for g in state_dict["param_groups"]) or any(
        isinstance(st, dict) and "step" in st for st in state_dict.get("state", {}).values()
    )
    if foreign:
        raise ValueError(
            "this optimizer state is not FusedAdamW's (it has per-parameter 'step' entries, as "
            "torch.optim.AdamW writes): load only the model weights and start FusedAdamW fresh, "
            "or resume from a checkpoint written with FusedAdamW"
        )


def normalize_loaded(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A checked, shallow-copied state dict."""
    check_loadable(state_dict)
    groups = [dict(g) for g in state_dict["param_groups"]]
    state = {k: dict(v) for k, v in state_dict.get("state", {}).items()}
    return {**state_dict, "param_groups": groups, "state": state}


def pick_kind(flats: list[Flat], kind: str | None) -> str:
    """The average kind asked for, or the only one kept when ``kind`` is None."""
    kept = sorted({k for f in flats for k in f.avg})
    if kind is None:
        if len(kept) == 1:
            return kept[0]
        if not kept:
            raise RuntimeError("no parameter group keeps an average (swa=False, ema=False)")
        raise ValueError("both SWA and EMA are kept: pass kind='swa' or kind='ema'")
    if kind not in AVERAGE_KINDS:
        raise ValueError(f"kind must be 'swa' or 'ema', got {kind!r}")
    return kind
