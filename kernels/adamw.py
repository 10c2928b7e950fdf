"""FusedAdamW: torch.optim.AdamW's update, grad clipping, loss-scale skip, SWA and EMA in one pass.

Design (why it looks like this):

* **Flat buffers.** Every parameter group gets one contiguous fp32 buffer each for the params, the
  moments (m, v) and each running average it keeps (SWA window mean, EMA). Each ``p.data`` is
  rebound to a view of the group's param buffer, so the model keeps the very same ``Parameter``
  objects while one kernel launch updates the whole group. Buffers are zero-padded to a multiple
  of 1024 elements (a zero param with zero grad stays zero under AdamW), so the kernel may assume
  ``n % 16 == 0`` and issue 128-bit accesses under its ``offs < n`` mask.
* **Gradients.** The kernel reads one flat grad buffer per group. ``prepare_grads()`` (or the first
  ``zero_grad(set_to_none=False)``) makes every ``p.grad`` a view of it, and backward then
  accumulates straight into it: zero copies. ``grad_buffers()`` hands those buffers out for an
  in-place all-reduce. Grads that do not live there (autograd's fresh tensors after
  ``zero_grad(set_to_none=True)``) are copied in once per step. If all grads of a group are bf16
  the buffer is bf16 (the kernel upcasts after loading). A parameter whose grad is None is stepped
  with a zero gradient (its moments and weight decay still advance), unlike torch.optim.AdamW,
  which skips it; a group with no grads at all is skipped.
* **One pass.** Each element is read once and written once: p, g, m, v (+ swa, + ema) in; p, m, v
  (+ swa, + ema) out. SWA and EMA are compile-time switches of one kernel, so a step that averages
  neither touches neither buffer, and a step that averages both reads p's new value once.
* **No host sync.** ``clip_grad_norm_`` returns the norm as a 0-dim device tensor: per-program
  partial sums of squares, then one program sums them in a fixed order (deterministic, no
  atomics) and writes the clip coefficient, which the AdamW kernel multiplies into g after loading
  it. ``p.grad`` itself is never rescaled. With ``step(scaler=DynamicLossScaler)`` the inverse
  loss scale joins that coefficient (clipping uses the unscaled norm), a step whose grads hold
  inf/NaN is masked off on the device, and the scale is updated by the same one-program kernel.
* **Step count.** ``group["step"]`` counts ``step()`` calls that had grads and drives the
  averaging schedule. Bias correction uses the applied updates, ``step - skipped_steps``: a step
  skipped by the loss scaler does not count, as with torch.amp.GradScaler. During loss scaling the
  skipped count lives on the device; ``state_dict()`` reads it back.
* **State.** Per-parameter state holds views {"exp_avg", "exp_avg_sq"(, "swa")(, "ema")} into the
  flat buffers; ``load_state_dict`` copies loaded values back into the buffers and restores the
  views, so a resumed run continues bitwise. States of the old one-average format load too.
* **Dispatch.** ``use_triton`` (CUDA, or CPU under TRITON_INTERPRET=1) runs the Triton kernels;
  otherwise `kernels.reference` runs the same arithmetic in the same order with torch ops.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ._adamw_state import (
    AVERAGE_KINDS,
    Flat,
    check_hparams,
    ema_weights,
    normalize_loaded,
    pick_kind,
    swa_weights,
)
from ._utils import use_triton
from .reference import adamw_ref, adamw_scalars, grad_norm_ref
from .scaler import DynamicLossScaler

__all__ = ["DynamicLossScaler", "FusedAdamW"]


def _kernels():
    from . import _adamw_kernels  # needs triton: imported on the first Triton step only

    return _adamw_kernels


def _launch_adamw(bufs: dict, coef: torch.Tensor, n: int, hp: dict, device_step=None) -> None:
    """Launch the AdamW kernel once over a whole flat group (tests wrap this to count launches)."""
    _kernels().launch_adamw(bufs, coef, n, hp, device_step)


class FusedAdamW(torch.optim.Optimizer):
    """AdamW (torch semantics) fused with global-norm clipping, loss scaling, SWA and EMA.

    Args:
        params: parameters or param-group dicts (fp32, all on one device).
        lr, betas, eps, weight_decay: as torch.optim.AdamW (per group).
        swa: keep the SWA window mean: updated every ``swa_interval`` steps, restarting every
            ``swa_horizon`` steps (None = never restart).
        ema: keep an EMA: a copy of the params at step ``ema_start``, then
            avg <- ema_decay * avg + (1 - ema_decay) * p every ``ema_interval`` steps.
        max_grad_norm: if set, each ``step()`` clips to this global norm (unless
            ``clip_grad_norm_`` was already called for this step).
        average, average_interval, average_horizon: the old one-average spelling
            (average="swa" or "ema"), kept as aliases.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        *,
        swa: bool = False,
        swa_interval: int = 5,
        swa_horizon: int | None = 500,
        ema: bool = False,
        ema_decay: float | None = None,  # required with ema=True (one default: the trainer's)
        ema_interval: int = 10,
        ema_start: int = 0,
        max_grad_norm: float | None = None,
    ) -> None:
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self._flats: list[Flat] = []
        self._index: dict[int, tuple[int, int]] = {}
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, DynamicLossScaler | None] | None = None
        self._skipped_host = 0
        self._skipped_dev: torch.Tensor | None = None
        self._one: torch.Tensor | None = None
        self._partials: torch.Tensor | None = None
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            swa=swa, swa_interval=swa_interval, swa_horizon=swa_horizon,
            ema=ema, ema_decay=ema_decay, ema_interval=ema_interval, ema_start=ema_start,
            step=0, skipped_steps=0,
        )  # fmt: skip
        check_hparams(defaults)
        super().__init__(params, defaults)

    # ----------------------------------------------------------------------------------- set-up
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        params = group["params"]
        if not params:
            self.param_groups.pop()
            raise ValueError(
                f"param group {len(self.param_groups)} has no parameters; drop it or give it some"
            )
        check_hparams(group)
        for p in params:
            if p.dtype != torch.float32:
                raise TypeError(
                    f"FusedAdamW needs float32 params, got {p.dtype} (shape {tuple(p.shape)})"
                )
            if p.is_sparse:
                raise TypeError("FusedAdamW does not support sparse params")
        devices = {p.device for p in params} | {f.param.device for f in self._flats}
        if len(devices) > 1:
            raise ValueError(f"all FusedAdamW params must live on one device, got {devices}")
        flat = Flat(params)
        gi = len(self._flats)
        with torch.no_grad():
            for i, p in enumerate(params):
                view = flat.view(flat.param, i, p)
                view.copy_(p)
                p.data = view  # same Parameter object, storage now inside the group's flat buffer
                self._index[id(p)] = (gi, i)
        flat.sync_averages(group)
        for i, p in enumerate(params):
            self.state[p] = flat.state_views(i, p)
        self._flats.append(flat)
        self._partials = None

    # ------------------------------------------------------------------------------------ grads
    def _gather_grads(self, group: dict[str, Any], flat: Flat) -> bool:
        """Make every p.grad of the group a view of one flat buffer; False if it has no grads."""
        params = group["params"]
        if flat.grads_are_views(params):
            return True  # the zero-copy path: backward accumulated straight into the buffer
        present = [p.grad for p in params if p.grad is not None]
        if not present:
            return False
        for p in params:
            g = p.grad
            if g is not None and g.dtype not in (torch.float32, torch.bfloat16):
                raise TypeError(f"FusedAdamW grads must be float32 or bfloat16, got {g.dtype}")
            if g is not None and g.shape != p.shape:
                raise ValueError(
                    f"grad shape {tuple(g.shape)} does not match param shape {tuple(p.shape)}"
                )
            if g is not None and g.is_sparse:
                raise TypeError("FusedAdamW does not support sparse grads")
        want = torch.bfloat16 if all(g.dtype == torch.bfloat16 for g in present) else torch.float32
        flat.make_grad_views(params, want)
        return True

    def prepare_grads(self) -> None:
        """Make every p.grad a (zero, if it had none) view of its group's flat grad buffer now, so
        the first backward already accumulates in place."""
        for group, flat in zip(self.param_groups, self._flats):
            if not self._gather_grads(group, flat):
                flat.make_grad_views(group["params"], torch.float32)

    def grad_buffers(self) -> list[torch.Tensor]:
        """The flat grad buffer of each group (p.grad are views of them), e.g. to all-reduce."""
        self.prepare_grads()
        return [f.grad for f in self._flats]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """set_to_none=True: torch semantics (grads become None). False: one fill per flat grad
        buffer; every p.grad stays (or becomes) a view of it, so backward accumulates in place."""
        if set_to_none:
            super().zero_grad(set_to_none=True)
            return
        self.prepare_grads()
        for flat in self._flats:
            flat.grad.zero_()

    # --------------------------------------------------------------------------- norm and clip
    @torch.no_grad()
    def clip_grad_norm_(
        self, max_norm: float, *, scaler: DynamicLossScaler | None = None
    ) -> torch.Tensor:
        """Global L2 norm of all grads (unscaled by ``scaler``) as a 0-dim device tensor, no sync.

        The clip coefficient min(1, max_norm / (norm + 1e-6)) is applied by the next ``step()``
        inside the AdamW kernel, so ``p.grad`` is left as it is. ``max_norm=inf`` only measures.
        With ``scaler``, also updates the loss scale (pass the same scaler to ``step``).
        """
        if not (isinstance(max_norm, (int, float)) and max_norm > 0):
            raise ValueError(f"max_norm must be > 0 (inf to only measure), got {max_norm}")
        active = [f for g, f in zip(self.param_groups, self._flats) if self._gather_grads(g, f)]
        if not active:
            self._pending = None
            self.last_grad_norm = torch.zeros((), device=self._flats[0].param.device)
            return self.last_grad_norm
        if scaler is not None and scaler.device != active[0].param.device:
            raise ValueError(f"the loss scaler lives on {scaler.device}, the params elsewhere")
        out = torch.empty(3, dtype=torch.float32, device=active[0].param.device)
        if use_triton(active[0].param):
            self._finalize_triton(active, out, float(max_norm), scaler)
        else:
            skipped = self._device_skipped(out.device) if scaler is not None else None
            out.copy_(grad_norm_ref([f.grad for f in active], float(max_norm), scaler, skipped))
        self._pending = (out, scaler)
        self.last_grad_norm = out[0]
        return self.last_grad_norm

    def _finalize_triton(
        self, active: list[Flat], out: torch.Tensor, max_norm: float, scaler
    ) -> None:
        k = _kernels()
        sizes = [k.num_partials(f.n) for f in active]
        if self._partials is None or self._partials.numel() != sum(sizes):
            self._partials = torch.empty(sum(sizes), dtype=torch.float32, device=out.device)
        off = 0
        for f, size in zip(active, sizes):
            k.launch_sumsq(f.grad, self._partials[off : off + size], scaler and scaler._scale)
            off += size
        skipped = self._device_skipped(out.device) if scaler is not None else None
        k.launch_finalize(self._partials, out, max_norm, scaler, skipped)

    def _device_skipped(self, device: torch.device) -> torch.Tensor:
        if self._skipped_dev is None:
            self._skipped_dev = torch.full(
                (1,), self._skipped_host, dtype=torch.int32, device=device
            )
        return self._skipped_dev

    def _skipped_count(self) -> int:
        """Skipped steps, read back from the device once when loss scaling stops (or to save)."""
        if self._skipped_dev is not None:
            self._skipped_host = int(self._skipped_dev.item())
        return self._skipped_host

    # ------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Any = None, *, scaler: DynamicLossScaler | None = None) -> Any:
        """One AdamW update of every group with grads (+ clipping, loss-scale skip, averages)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            check_hparams(group)  # lr and friends may have been edited since construction
        if self._pending is None and (self.max_grad_norm is not None or scaler is not None):
            bound = self.max_grad_norm if self.max_grad_norm is not None else math.inf
            self.clip_grad_norm_(bound, scaler=scaler)
        pending, self._pending = self._pending, None
        if pending is not None and pending[1] is not scaler:
            raise ValueError("pass the same scaler= to clip_grad_norm_ and step (or to neither)")
        if scaler is None and self._skipped_dev is not None:
            self._skipped_count()  # leaving loss scaling: one read, then host scalars again
            self._skipped_dev = None
        for group, flat in zip(self.param_groups, self._flats):
            if not self._gather_grads(group, flat):
                continue
            flat.sync_averages(group)
            self._step_group(group, flat, pending)
            group["step"] += 1
        return loss

    def _step_group(self, group: dict[str, Any], flat: Flat, pending) -> None:
        t = group["step"]
        beta1, beta2 = group["betas"]
        lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
        swa_w, ema_w = swa_weights(group, t), ema_weights(group, t)
        scaled = pending is not None and pending[1] is not None
        if use_triton(flat.param):
            applied = t + 1 - self._skipped_host
            hp = adamw_scalars(lr, beta1, beta2, wd, max(applied, 1))
            hp.update(beta2=beta2, eps=eps, lr=lr, step1=t + 1, swa_w=swa_w, ema_w=ema_w)
            bufs = {"p": flat.param, "g": flat.grad, "m": flat.exp_avg, "v": flat.exp_avg_sq}
            if swa_w is not None:
                bufs["swa"] = flat.avg["swa"]
            if ema_w is not None:
                bufs["ema"] = flat.avg["ema"]
            coef = pending[0][1:2] if pending is not None else self._ones(flat.param.device)
            dev_step = None
            if scaled:
                dev_step = (pending[0][2:3], self._skipped_dev, flat.ln_betas(beta1, beta2))
            _launch_adamw(bufs, coef, flat.n, hp, dev_step)
            return
        step = t + 1 - (self._skipped_dev.double() if scaled else self._skipped_host)
        adamw_ref(
            flat.param, flat.grad, flat.exp_avg, flat.exp_avg_sq,
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd, step=step,
            grad_scale=pending[0][1:2] if pending is not None else None,
            swa=flat.avg["swa"] if swa_w is not None else None, swa_weights=swa_w or (0.0, 1.0),
            ema=flat.avg["ema"] if ema_w is not None else None, ema_weights=ema_w or (0.0, 1.0),
            skip=pending[0][2:3] if scaled else None,
        )  # fmt: skip

    def _ones(self, device: torch.device) -> torch.Tensor:
        if self._one is None:
            self._one = torch.ones(1, dtype=torch.float32, device=device)
        return self._one

    # -------------------------------------------------------------------------------- averages
    def averaged(self, p: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """A view of parameter p's running average of ``kind`` ("swa" or "ema"; may be omitted
        when only one is kept). It equals p until the average first moves."""
        if id(p) not in self._index:
            raise KeyError("parameter is not managed by this optimizer")
        kind = pick_kind(self._flats, kind)
        gi, i = self._index[id(p)]
        flat = self._flats[gi]
        if kind not in flat.avg:
            raise RuntimeError(f"this parameter's group keeps no {kind} average ({kind}=False)")
        return flat.view(flat.avg[kind], i, p)

    @contextlib.contextmanager
    def use_averaged_weights(self, kind: str | None = None) -> Iterator[None]:
        """Swap the ``kind`` averages into the params (a copy per group), and back even on error."""
        kind = pick_kind(self._flats, kind)
        swapped = [f for f in self._flats if kind in f.avg]
        saved = [f.param.clone() for f in swapped]
        with torch.no_grad():
            for f in swapped:
                f.param.copy_(f.avg[kind])
        try:
            yield
        finally:
            with torch.no_grad():
                for f, s in zip(swapped, saved):
                    f.param.copy_(s)

    # ------------------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        skipped = self._skipped_count()
        for group in self.param_groups:
            group["skipped_steps"] = skipped
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(normalize_loaded(state_dict))
        # torch replaced self.state[p] with fresh tensors: copy them into the flat buffers and point
        # the state back at the views so the kernel keeps seeing one buffer per group.
        with torch.no_grad():
            for group, flat in zip(self.param_groups, self._flats):
                for key, value in self.defaults.items():
                    group.setdefault(key, value)
                check_hparams(group)
                flat.sync_averages(group)
                for i, p in enumerate(group["params"]):
                    loaded = self.state.get(p, {})
                    views = flat.state_views(i, p)
                    for k, v in views.items():
                        if k in loaded:
                            v.copy_(loaded[k])
                        elif k in AVERAGE_KINDS:  # an average the checkpoint lacks starts at p
                            v.copy_(flat.view(flat.param, i, p))
                        else:
                            v.zero_()
                    self.state[p] = views
        self._skipped_host = max(int(g.get("skipped_steps", 0)) for g in self.param_groups)
        self._skipped_dev = None
        self._pending = None
