"""FusedAdamW: torch.optim.AdamW's update plus SWA/EMA weight averaging in one Triton pass per group.

Design (why it looks like this):

* **Flat buffers.** At construction every parameter group gets one contiguous fp32 buffer for the
  params, one each for the first/second moments (m, v) and, when averaging, one for the average.
  Each ``p.data`` is rebound to a view of the group's param buffer, so the model keeps the very same
  ``Parameter`` objects while one kernel launch can update the whole group (one launch per group per
  step, however many tensors it holds). Buffers are padded to a multiple of ``_PAD`` elements with
  zeros (a zero param with zero grad stays exactly zero under AdamW), which lets the kernel assume
  ``n % 16 == 0`` and so issue 128-bit loads/stores even under the ``offs < n`` mask.
* **Gradients.** The kernel reads one flat grad buffer per group. ``_gather_grads`` makes every
  ``p.grad`` a view of it: grads already living there cost nothing; others (fresh tensors created by
  autograd after ``zero_grad(set_to_none=True)``) are copied in once and ``p.grad`` is re-pointed to
  the view. ``zero_grad(set_to_none=False)`` zeroes each group's buffer with one fill and keeps the
  views, so the next backward accumulates straight into the flat buffer (the zero-copy path).
  If all grads of a group are bf16 the buffer is bf16 (the kernel upcasts right after the load);
  otherwise it is fp32. A parameter whose grad is None is stepped with a zero gradient (its moments
  and weight decay still advance), unlike torch.optim.AdamW which skips it; a group with no grads at
  all is skipped.
* **Each element read once, written once.** read p, g, m, v (+avg), write p, m, v (+avg). The
  averaging variant is a separate compiled kernel (``AVERAGE`` constexpr) so non-averaging steps
  neither read nor write the average.
* **Clipping.** The global grad norm is a fused reduction (fp32 per-program partial sums of squares,
  then a deterministic ``torch.sum`` over the partials; no atomics, no per-tensor loop). The clip
  coefficient min(1, max_norm / (norm + 1e-6)) lives in a 1-element device tensor that the AdamW
  kernel multiplies into g after loading it, so clipping costs no extra pass over the grads and no
  host sync for the scale. Note: ``clip_grad_norm_`` therefore does NOT rescale ``p.grad``; the scale
  is applied by the next ``step()``.
* **Step count.** t (0, 1, 2, ... = optimizer steps already taken) is per group, stored as
  ``group["step"]`` so it travels in ``state_dict()``. Per-parameter state holds views
  ``{"exp_avg", "exp_avg_sq"(, "avg")}`` into the flat buffers; ``load_state_dict`` copies loaded
  values back into the buffers and restores the views, so a resumed run continues bitwise.
* **Dispatch.** ``use_triton`` (CUDA, or CPU under TRITON_INTERPRET=1) runs the kernel; otherwise
  ``adamw_ref`` runs the same arithmetic in the same order with torch ops on the same buffers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import triton
import triton.language as tl

from ._utils import use_triton

BLOCK = 1024  # elements per program of the AdamW kernel: 8 fp32 per thread at 4 warps = 2x128-bit
NUM_WARPS = 4
NORM_BLOCK = 4096  # elements per program of the grad-norm partial-sum kernel
_PAD = BLOCK  # flat buffers are padded to this many elements (a multiple of 16 for vector access)
_AVERAGE_KINDS = (None, "swa", "ema")


@triton.jit
def _adamw_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    avg_ptr,
    scale_ptr,
    n_elements,
    wd_factor,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,
    bc2_sqrt,
    eps,
    avg_keep,
    avg_take,
    AVERAGE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    # Upcast right after the load: the interpreter emulates bf16 math poorly and fp32 is right on GPU.
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    g = g * tl.load(scale_ptr)  # clip coefficient (1.0 when not clipping)
    # Same operation order as torch.optim.AdamW (single-tensor path): decay, lerp m, v, addcdiv.
    p = p * wd_factor
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    denom = tl.sqrt(v) / bc2_sqrt + eps
    p = p - (step_size * m) / denom  # addcdiv order: (value * t1) / t2
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    if AVERAGE:
        # SWA: keep = 1 - 1/(k+1), take = 1/(k+1); EMA: keep = decay, take = 1 - decay;
        # a restart/first step has keep = 0, take = 1 (avg is finite, so this copies p exactly).
        a = tl.load(avg_ptr + offs, mask=mask, other=0.0)
        a = a * avg_keep + p * avg_take
        tl.store(avg_ptr + offs, a, mask=mask)


@triton.jit
def _sumsq_kernel(g_ptr, partial_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    g = tl.load(g_ptr + offs, mask=offs < n_elements, other=0.0).to(tl.float32)
    tl.store(partial_ptr + pid, tl.sum(g * g, axis=0))


def adamw_ref(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    grad_scale: torch.Tensor | float | None = None,
    avg: torch.Tensor | None = None,
    avg_keep: float = 0.0,
    avg_take: float = 1.0,
) -> None:
    """In-place AdamW step on fp32 tensors, same math and order as the kernel (the CPU fast path).

    ``step`` is the 1-based step number used for bias correction. ``grad`` may be fp32 or bf16 (it is
    upcast first). ``grad_scale`` multiplies the gradient (the clip coefficient). When ``avg`` is
    given it is updated after the step as ``avg * avg_keep + param * avg_take``.
    """
    s = _scalars(lr, beta1, beta2, eps, weight_decay, step)
    g = grad.float()
    if grad_scale is not None:
        g = g * grad_scale
    param.mul_(s["wd_factor"])
    exp_avg.add_(s["one_minus_beta1"] * (g - exp_avg))
    exp_avg_sq.copy_(exp_avg_sq * beta2 + s["one_minus_beta2"] * g * g)
    denom = exp_avg_sq.sqrt() / s["bc2_sqrt"] + eps
    param.sub_((s["step_size"] * exp_avg) / denom)
    if avg is not None:
        avg.copy_(avg * avg_keep + param * avg_take)


def _scalars(lr: float, beta1: float, beta2: float, eps: float, wd: float, step: int) -> dict:
    """Per-step fp64 host scalars (rounded to fp32 at the kernel boundary), as torch computes them."""
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return {
        "wd_factor": 1.0 - lr * wd,
        "one_minus_beta1": 1.0 - beta1,
        "one_minus_beta2": 1.0 - beta2,
        "step_size": lr / bc1,
        "bc2_sqrt": math.sqrt(bc2),
    }


def _launch_adamw(
    p, g, m, v, avg, scale, n, s: dict, beta2: float, eps: float, avg_keep: float, avg_take: float
) -> None:
    """Launch the AdamW kernel once over a whole flat group (tests wrap this to count launches)."""
    grid = (triton.cdiv(n, BLOCK),)
    _adamw_kernel[grid](
        p,
        g,
        m,
        v,
        avg if avg is not None else p,
        scale,
        n,
        s["wd_factor"],
        s["one_minus_beta1"],
        beta2,
        s["one_minus_beta2"],
        s["step_size"],
        s["bc2_sqrt"],
        eps,
        avg_keep,
        avg_take,
        AVERAGE=avg is not None,
        BLOCK_SIZE=BLOCK,
        num_warps=NUM_WARPS,
    )


def _sumsq(grad: torch.Tensor) -> torch.Tensor:
    """Sum of squares of a flat grad buffer as a 0-d fp32 tensor, deterministic."""
    if use_triton(grad):
        n = grad.numel()
        nprog = triton.cdiv(n, NORM_BLOCK)
        partial = torch.empty(nprog, dtype=torch.float32, device=grad.device)
        _sumsq_kernel[(nprog,)](grad, partial, n, BLOCK_SIZE=NORM_BLOCK, num_warps=NUM_WARPS)
        return partial.sum()
    return grad.float().pow(2).sum()


class _Flat:
    """Flat per-group storage: params, grads, moments, average, and each param's (offset, numel)."""

    def __init__(self, params: list[torch.Tensor], average: str | None) -> None:
        self.slices: list[tuple[int, int]] = []
        off = 0
        for p in params:
            self.slices.append((off, p.numel()))
            off += p.numel()
        self.n = max(_PAD, -(-off // _PAD) * _PAD)
        dev = params[0].device
        self.param = torch.zeros(self.n, dtype=torch.float32, device=dev)
        self.exp_avg = torch.zeros_like(self.param)
        self.exp_avg_sq = torch.zeros_like(self.param)
        self.avg = torch.zeros_like(self.param) if average is not None else None
        self.grad: torch.Tensor | None = None

    def view(self, buf: torch.Tensor, i: int, like: torch.Tensor) -> torch.Tensor:
        off, n = self.slices[i]
        return buf[off : off + n].view(like.shape)


class FusedAdamW(torch.optim.Optimizer):
    """AdamW (torch semantics) fused with global-norm clipping and SWA/EMA averaging.

    Args:
        params: parameters or param-group dicts (fp32, all on one device per group).
        lr, betas, eps, weight_decay: as torch.optim.AdamW (per group).
        average: None, "swa" (window average restarting every ``average_horizon`` steps) or "ema".
        average_interval: average on steps t with t % interval == 0.
        average_horizon: SWA window length in steps (multiple of the interval), None = never restart.
        ema_decay: EMA decay in [0, 1).
        max_grad_norm: if set, each ``step()`` clips to this global norm (unless
            ``clip_grad_norm_`` was already called for this step).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        average: str | None = None,
        average_interval: int = 5,
        average_horizon: int | None = 500,
        ema_decay: float = 0.999,
        max_grad_norm: float | None = None,
    ) -> None:
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self._flats: list[_Flat] = []
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm: float | None = None
        self._pending_scale: torch.Tensor | None = None
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            average=average,
            average_interval=average_interval,
            average_horizon=average_horizon,
            ema_decay=ema_decay,
            step=0,
        )
        _check_hparams(defaults)
        super().__init__(params, defaults)

    # ----------------------------------------------------------------------------------- set-up
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hparams(group)
        params = group["params"]
        for p in params:
            if p.dtype != torch.float32:
                raise TypeError(
                    f"FusedAdamW needs float32 params, got {p.dtype} (shape {tuple(p.shape)})"
                )
            if p.is_sparse:
                raise TypeError("FusedAdamW does not support sparse params")
        if len({p.device for p in params}) > 1:
            raise ValueError("all params of a FusedAdamW group must live on one device")
        flat = _Flat(params, group["average"])
        with torch.no_grad():
            for i, p in enumerate(params):
                view = flat.view(flat.param, i, p)
                view.copy_(p)
                p.data = view  # same Parameter object, storage now inside the group's flat buffer
                self.state[p] = self._state_views(flat, i, p)
        self._flats.append(flat)

    @staticmethod
    def _state_views(flat: _Flat, i: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = {
            "exp_avg": flat.view(flat.exp_avg, i, p),
            "exp_avg_sq": flat.view(flat.exp_avg_sq, i, p),
        }
        if flat.avg is not None:
            st["avg"] = flat.view(flat.avg, i, p)
        return st

    # ------------------------------------------------------------------------------------ grads
    def _gather_grads(self, group: dict[str, Any], flat: _Flat) -> bool:
        """Make every p.grad of the group a view of one flat buffer; False if the group has no grads."""
        params = group["params"]
        grads = [p.grad for p in params]
        present = [g for g in grads if g is not None]
        if not present:
            return False
        for p, g in zip(params, grads):
            if g is not None and g.dtype not in (torch.float32, torch.bfloat16):
                raise TypeError(f"FusedAdamW grads must be float32 or bfloat16, got {g.dtype}")
            if g is not None and g.shape != p.shape:
                raise ValueError(
                    f"grad shape {tuple(g.shape)} does not match param shape {tuple(p.shape)}"
                )
            if g is not None and g.is_sparse:
                raise TypeError("FusedAdamW does not support sparse grads")
        want = torch.bfloat16 if all(g.dtype == torch.bfloat16 for g in present) else torch.float32
        buf = flat.grad
        if buf is None or buf.dtype != want:
            buf = torch.zeros(flat.n, dtype=want, device=flat.param.device)
            flat.grad = buf
        for i, (p, g) in enumerate(zip(params, grads)):
            view = flat.view(buf, i, p)
            if g is not None and g.dtype == want and g.data_ptr() == view.data_ptr():
                continue  # already lives in the flat buffer (zero-copy path)
            with torch.no_grad():
                if g is None:
                    view.zero_()
                else:
                    view.copy_(g)
            p.grad = view
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """set_to_none=True: torch semantics (grads become None). False: one fill per flat buffer,
        grads stay views so the next backward accumulates in place (no gather copy)."""
        if set_to_none:
            super().zero_grad(set_to_none=True)
            return
        for group, flat in zip(self.param_groups, self._flats):
            if flat.grad is not None and all(
                p.grad is not None
                and p.grad.data_ptr() == flat.view(flat.grad, i, p).data_ptr()
                and p.grad.dtype == flat.grad.dtype
                for i, p in enumerate(group["params"])
            ):
                flat.grad.zero_()
            else:
                super().zero_grad(set_to_none=False)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> float:
        """Global L2 norm of all grads (fused reduction); returns the pre-clip norm.

        The clip coefficient is applied by the next ``step()`` inside the AdamW kernel, so ``p.grad``
        itself is left unscaled.
        """
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        total: torch.Tensor | None = None
        for group, flat in zip(self.param_groups, self._flats):
            if self._gather_grads(group, flat):
                sq = _sumsq(flat.grad)
                total = sq if total is None else total + sq.to(total.device)
        if total is None:
            self.last_grad_norm = 0.0
            return 0.0
        norm = total.sqrt()
        self._pending_scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0).float().reshape(1)
        self.last_grad_norm = float(norm)
        return self.last_grad_norm

    # ------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending_scale is None and self.max_grad_norm is not None:
            self.clip_grad_norm_(self.max_grad_norm)
        scale = self._pending_scale
        self._pending_scale = None
        for group, flat in zip(self.param_groups, self._flats):
            if not self._gather_grads(group, flat):
                continue
            t = group["step"]
            lr = float(group["lr"])
            if lr < 0:
                raise ValueError(f"lr must be >= 0, got {lr}")
            beta1, beta2 = group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            keep, take = _average_weights(group, t)
            avg = flat.avg if take is not None else None
            if use_triton(flat.param):
                s = _scalars(lr, beta1, beta2, eps, wd, t + 1)
                sc = (
                    scale.to(flat.param.device)
                    if scale is not None
                    else torch.ones(1, dtype=torch.float32, device=flat.param.device)
                )
                _launch_adamw(
                    flat.param,
                    flat.grad,
                    flat.exp_avg,
                    flat.exp_avg_sq,
                    avg,
                    sc,
                    flat.n,
                    s,
                    beta2,
                    eps,
                    keep or 0.0,
                    take or 0.0,
                )
            else:
                adamw_ref(
                    flat.param,
                    flat.grad,
                    flat.exp_avg,
                    flat.exp_avg_sq,
                    lr=lr,
                    beta1=beta1,
                    beta2=beta2,
                    eps=eps,
                    weight_decay=wd,
                    step=t + 1,
                    grad_scale=scale,
                    avg=avg,
                    avg_keep=keep or 0.0,
                    avg_take=take or 0.0,
                )
            group["step"] = t + 1
        return loss

    # -------------------------------------------------------------------------------- averages
    def averaged(self, p: torch.Tensor) -> torch.Tensor:
        """The running average of parameter p (a view; the zeros before the first step)."""
        for group, flat in zip(self.param_groups, self._flats):
            for i, q in enumerate(group["params"]):
                if q is p:
                    if flat.avg is None:
                        raise RuntimeError("this parameter's group has average=None")
                    return flat.view(flat.avg, i, p)
        raise KeyError("parameter is not managed by this optimizer")

    @contextlib.contextmanager
    def use_averaged_weights(self) -> Iterator[None]:
        """Swap the averages into the params (one swap per group buffer) and back, even on error."""
        swapped = [f for f in self._flats if f.avg is not None]
        if not swapped:
            raise RuntimeError("no parameter group keeps an average (average=None)")
        saved = [f.param.clone() for f in swapped]
        with torch.no_grad():
            for f in swapped:
                f.param.copy_(f.avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for f, s in zip(swapped, saved):
                    f.param.copy_(s)

    # ------------------------------------------------------------------------------ state dict
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch replaced self.state[p] with fresh tensors: copy them into the flat buffers and point
        # the state back at the views so the kernel keeps seeing one buffer per group.
        with torch.no_grad():
            for group, flat in zip(self.param_groups, self._flats):
                _check_hparams(group)
                if (group["average"] is None) != (flat.avg is None):
                    raise ValueError(
                        "loaded state changes 'average' on/off for a group; rebuild the optimizer"
                    )
                for i, p in enumerate(group["params"]):
                    loaded = self.state.get(p, {})
                    views = self._state_views(flat, i, p)
                    for k, v in views.items():
                        if k in loaded:
                            v.copy_(loaded[k])
                        else:
                            v.zero_()
                    self.state[p] = views


def _average_weights(group: dict[str, Any], t: int) -> tuple[float | None, float | None]:
    """(keep, take) of avg <- avg*keep + p*take for step t, or (None, None) on non-averaging steps."""
    kind = group["average"]
    interval = group["average_interval"]
    if kind is None or t % interval != 0:
        return None, None
    if kind == "swa":
        horizon = group["average_horizon"]
        k = (t % horizon) // interval if horizon is not None else t // interval
        rate = 1.0 / (k + 1)
        return 1.0 - rate, rate
    if t == 0:
        return 0.0, 1.0  # EMA: the first averaging step copies p
    d = float(group["ema_decay"])
    return d, 1.0 - d


def _check_hparams(g: dict[str, Any]) -> None:
    """Clear errors for bad hyperparameters, before anything reaches Triton."""
    lr, eps, wd = g["lr"], g["eps"], g["weight_decay"]
    if isinstance(lr, torch.Tensor):
        raise TypeError("FusedAdamW takes lr as a Python float, not a tensor")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not wd >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {wd}")
    betas = g["betas"]
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two values in [0, 1), got {betas}")
    kind = g["average"]
    if kind not in _AVERAGE_KINDS:
        raise ValueError(f"average must be one of None, 'swa', 'ema', got {kind!r}")
    interval, horizon = g["average_interval"], g["average_horizon"]
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise ValueError(f"average_interval must be a positive int, got {interval!r}")
    if horizon is not None:
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"average_horizon must be a positive int or None, got {horizon!r}")
        if horizon % interval != 0:
            raise ValueError(
                f"average_interval ({interval}) must divide average_horizon ({horizon})"
            )
    if not 0.0 <= g["ema_decay"] < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {g['ema_decay']}")


def aot_specs() -> list[dict]:
    """Compile specs for kernels.aot: the AdamW kernel (fp32/bf16 grads, with/without averaging)
    and the grad-norm partial-sum kernel, at their block sizes."""
    specs = []
    for gdt in ("fp32", "bf16"):
        for avg in (False, True):
            specs.append(
                {
                    "kernel": "adamw" + ("_avg" if avg else ""),
                    "fn": _adamw_kernel,
                    "signature": {
                        "p_ptr": "*fp32",
                        "g_ptr": f"*{gdt}",
                        "m_ptr": "*fp32",
                        "v_ptr": "*fp32",
                        "avg_ptr": "*fp32",
                        "scale_ptr": "*fp32",
                        "n_elements": "i32",
                        "wd_factor": "fp32",
                        "one_minus_beta1": "fp32",
                        "beta2": "fp32",
                        "one_minus_beta2": "fp32",
                        "step_size": "fp32",
                        "bc2_sqrt": "fp32",
                        "eps": "fp32",
                        "avg_keep": "fp32",
                        "avg_take": "fp32",
                        "AVERAGE": "constexpr",
                        "BLOCK_SIZE": "constexpr",
                    },
                    "constexprs": {"AVERAGE": avg, "BLOCK_SIZE": BLOCK},
                    "num_warps": NUM_WARPS,
                    "divisible": ["p_ptr", "g_ptr", "m_ptr", "v_ptr", "avg_ptr", "n_elements"],
                    "dtype": gdt,
                    "hidden": BLOCK,
                    "note": f"fp32 params/states, {gdt} grads, "
                    + ("with" if avg else "no")
                    + " averaging",
                }
            )
        specs.append(
            {
                "kernel": "adamw_gradnorm",
                "fn": _sumsq_kernel,
                "signature": {
                    "g_ptr": f"*{gdt}",
                    "partial_ptr": "*fp32",
                    "n_elements": "i32",
                    "BLOCK_SIZE": "constexpr",
                },
                "constexprs": {"BLOCK_SIZE": NORM_BLOCK},
                "num_warps": NUM_WARPS,
                "divisible": ["g_ptr", "partial_ptr", "n_elements"],
                "dtype": gdt,
                "hidden": NORM_BLOCK,
                "note": f"{gdt} grads, per-program partial sums of squares",
            }
        )
    return specs
