"""Triton kernels and launchers behind `kernels.adamw.FusedAdamW` (imported lazily: needs triton).

Three kernels per optimizer step, none of which needs a host sync:

* ``_sumsq_kernel``: per-program partial sums of squares of a flat grad buffer (times the inverse
  loss scale when one is given), written into one shared partials buffer for all groups;
* ``_finalize_kernel`` (one program): sums the partials in a fixed order (deterministic, no
  atomics) and writes [norm, coef, found_inf] with coef = min(1, max_norm / (norm + 1e-6)) / scale
  as in torch.nn.utils.clip_grad_norm_ (torch/nn/utils/clip_grad.py); with a loss scale it also
  skips-counts and updates the scale on the device like ``torch._amp_update_scale_``
  (aten/src/ATen/native/cuda/AmpKernels.cu);
* ``_adamw_kernel``: the AdamW update of a whole flat group plus the SWA window mean and the EMA,
  each element read once and written once. SWA and EMA are constexpr switches, so a step that
  updates neither reads neither buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # elements per program of the AdamW kernel: 8 fp32 per thread at 4 warps = 2x128-bit
NUM_WARPS = 4
NORM_BLOCK = 4096  # elements per program of the grad-norm partial-sum kernel
FINALIZE_BLOCK = 1024


# step1 changes every step: not specializing it (on == 1, % 16 == 0) avoids recompiles mid-run.
@triton.jit(do_not_specialize=["step1"])
def _adamw_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, swa_ptr, ema_ptr, coef_ptr, flag_ptr, skipped_ptr, lnb_ptr,
    n_elements, step1, lr, wd_factor, one_minus_beta1, beta2, one_minus_beta2, step_size,
    bc2_sqrt, eps, swa_keep, swa_take, ema_keep, ema_take,
    SWA: tl.constexpr, EMA: tl.constexpr, SCALER: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    if SCALER:
        # A step with inf/NaN grads moves no byte: every load and store is masked off. The bias
        # correction counts applied steps only (step1 - skipped), computed in fp64 like the host.
        ok = 1 - tl.load(flag_ptr).to(tl.int32)  # found_inf is exactly 0.0 or 1.0
        mask = offs < n_elements * ok  # (a product keeps n's divisibility: 128-bit accesses)
        t = (step1 - tl.load(skipped_ptr)).to(tl.float64)
        bc1 = 1.0 - tl.exp(t * tl.load(lnb_ptr))
        step_size = (tl.cast(lr, tl.float64) / bc1).to(tl.float32)
        bc2_sqrt = tl.sqrt(1.0 - tl.exp(t * tl.load(lnb_ptr + 1))).to(tl.float32)
    # Upcast right after the load: the interpreter emulates bf16 math poorly; fp32 is right on GPU.
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    g = g * tl.load(coef_ptr)  # clip coefficient x inverse loss scale (1.0 when neither)
    # Same operation order as torch.optim.AdamW (single-tensor path): decay, lerp m, v, addcdiv.
    p = p * wd_factor
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    denom = tl.sqrt(v) / bc2_sqrt + eps
    p = p - (step_size * m) / denom  # addcdiv order: (value * t1) / t2
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    # avg <- avg * keep + p * take. SWA: keep = 1 - 1/(k+1), take = 1/(k+1); EMA: keep = decay;
    # a window start / the EMA's first step has keep = 0, take = 1 (a finite avg: an exact copy).
    if SWA:
        a = tl.load(swa_ptr + offs, mask=mask, other=0.0)
        tl.store(swa_ptr + offs, a * swa_keep + p * swa_take, mask=mask)
    if EMA:
        e = tl.load(ema_ptr + offs, mask=mask, other=0.0)
        tl.store(ema_ptr + offs, e * ema_keep + p * ema_take, mask=mask)


@triton.jit
def _sumsq_kernel(g_ptr, partial_ptr, scale_ptr, n_elements, HAS_SCALE: tl.constexpr,
                  BLOCK_SIZE: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    g = tl.load(g_ptr + offs, mask=offs < n_elements, other=0.0).to(tl.float32)
    if HAS_SCALE:
        g = g * (1.0 / tl.load(scale_ptr))  # the unscaled grad, so the norm is the true one
    tl.store(partial_ptr + pid, tl.sum(g * g, axis=0))


@triton.jit
def _finalize_kernel(
    partial_ptr, n_partials, out_ptr, scale_ptr, tracker_ptr, skipped_ptr,
    max_norm, growth, backoff, growth_interval,
    SCALER: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    acc = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    for start in range(0, n_partials, BLOCK_SIZE):  # fixed order: bitwise reproducible
        offs = start + tl.arange(0, BLOCK_SIZE)
        acc += tl.load(partial_ptr + offs, mask=offs < n_partials, other=0.0)
    norm = tl.sqrt(tl.sum(acc, axis=0))
    coef = tl.minimum(max_norm / (norm + 1e-6), 1.0, propagate_nan=tl.PropagateNan.ALL)
    found = (norm != norm) | (norm == float("inf"))
    if SCALER:
        scale = tl.load(scale_ptr)
        coef = coef / scale
        tracker = tl.load(tracker_ptr)
        grown = tracker + 1 == growth_interval
        new_scale = tl.where(found, scale * backoff, tl.where(grown, scale * growth, scale))
        new_scale = tl.where(
            new_scale == float("inf"), scale, new_scale
        )  # torch keeps a finite one
        tl.store(scale_ptr, new_scale)
        tl.store(tracker_ptr, tl.where(found | grown, 0, tracker + 1))
        tl.store(skipped_ptr, tl.load(skipped_ptr) + found.to(tl.int32))
    tl.store(out_ptr, norm)
    tl.store(out_ptr + 1, coef)
    tl.store(out_ptr + 2, found.to(tl.float32))


def num_partials(n: int) -> int:
    """Partial sums one flat grad buffer of n elements contributes."""
    return triton.cdiv(n, NORM_BLOCK)


def launch_sumsq(grad: torch.Tensor, partials: torch.Tensor, scale: torch.Tensor | None) -> None:
    """Write grad's per-program sums of squares (of grad / scale) into ``partials`` (a slice)."""
    n = grad.numel()
    _sumsq_kernel[(num_partials(n),)](
        grad, partials, scale if scale is not None else partials, n,
        HAS_SCALE=scale is not None, BLOCK_SIZE=NORM_BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip


def launch_finalize(
    partials: torch.Tensor, out: torch.Tensor, max_norm: float, scaler=None, skipped=None
) -> None:
    """[norm, coef, found_inf] into ``out``; with ``scaler`` also its on-device scale update and
    ``skipped += found_inf`` (the optimizer's count of skipped steps)."""
    if scaler is not None:
        st = (scaler._scale, scaler._growth_tracker, skipped)
        hp = (scaler.growth_factor, scaler.backoff_factor, scaler.growth_interval)
    else:
        st, hp = (out, out, out), (2.0, 0.5, 1)
    _finalize_kernel[(1,)](
        partials, partials.numel(), out, *st, float(max_norm), *hp,
        SCALER=scaler is not None, BLOCK_SIZE=FINALIZE_BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip


def launch_adamw(bufs: dict, coef: torch.Tensor, n: int, hp: dict, device_step=None) -> None:
    """Launch the AdamW kernel once over a whole flat group.

    ``bufs``: p, g, m, v and optionally swa, ema (None = not updated this step). ``hp``: the
    scalars of `kernels.reference.adamw_scalars` plus beta2, eps, lr, step1 and the
    (keep, take) pairs swa_w / ema_w. ``device_step``: (flag, skipped, ln_betas) tensors for the
    loss-scaler variant, which skips on the flag and bias-corrects by the applied-step count.
    """
    p = bufs["p"]
    swa, ema = bufs.get("swa"), bufs.get("ema")
    flag, skipped, lnb = device_step if device_step is not None else (coef, coef, coef)
    swa_w, ema_w = hp.get("swa_w") or (0.0, 0.0), hp.get("ema_w") or (0.0, 0.0)
    _adamw_kernel[(triton.cdiv(n, BLOCK),)](
        p, bufs["g"], bufs["m"], bufs["v"], swa if swa is not None else p,
        ema if ema is not None else p, coef, flag, skipped, lnb,
        n, hp["step1"], hp["lr"], hp["wd_factor"], hp["one_minus_beta1"], hp["beta2"],
        hp["one_minus_beta2"], hp["step_size"], hp["bc2_sqrt"], hp["eps"], *swa_w, *ema_w,
        SWA=swa is not None, EMA=ema is not None, SCALER=device_step is not None,
        BLOCK_SIZE=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip


_ADAMW_SIG = {
    **{k: "*fp32" for k in ("p_ptr", "g_ptr", "m_ptr", "v_ptr", "swa_ptr", "ema_ptr")},
    **{"coef_ptr": "*fp32", "flag_ptr": "*fp32", "skipped_ptr": "*i32", "lnb_ptr": "*fp64"},
    "n_elements": "i32",
    "step1": "i32",
    **{k: "fp32" for k in ("lr", "wd_factor", "one_minus_beta1", "beta2", "one_minus_beta2")},
    **{k: "fp32" for k in ("step_size", "bc2_sqrt", "eps", "swa_keep", "swa_take")},
    **{k: "fp32" for k in ("ema_keep", "ema_take")},
    **{k: "constexpr" for k in ("SWA", "EMA", "SCALER", "BLOCK_SIZE")},
}
_ADAMW_VARIANTS = (  # (name, SWA, EMA, SCALER, bytes/element beyond p, m, v and the grad)
    ("adamw", False, False, False, 0),
    ("adamw_swa", True, False, False, 8),
    ("adamw_swa_ema", True, True, False, 16),
    ("adamw_swa_ema_scaler", True, True, True, 16),
)


def aot_specs(dtypes: tuple[str, ...] = ("fp32", "bf16")) -> list[dict]:
    """Compile specs for `kernels.aot`: the AdamW variants and the grad norm, per grad dtype
    (fp32 or bf16; an fp16 run keeps fp32 grads of its fp32 params, so it maps to fp32)."""
    specs = []
    ptrs = ["p_ptr", "g_ptr", "m_ptr", "v_ptr", "swa_ptr", "ema_ptr", "n_elements"]
    gdts = list(dict.fromkeys("fp32" if d == "fp16" else d for d in dtypes))
    for gdt in gdts:
        gbytes = 4 if gdt == "fp32" else 2
        for name, swa, ema, scaler, extra in _ADAMW_VARIANTS:
            specs.append({
                "kernel": name, "fn": _adamw_kernel,
                "signature": {**_ADAMW_SIG, "g_ptr": f"*{gdt}"},
                "constexprs": {"SWA": swa, "EMA": ema, "SCALER": scaler, "BLOCK_SIZE": BLOCK},
                "num_warps": NUM_WARPS, "divisible": ptrs, "dtype": gdt, "hidden": BLOCK,
                "elems_per_iter": BLOCK, "bytes_per_elem": 24 + gbytes + extra,
                "note": f"fp32 params/states, {gdt} grads, one pass"
                + (" + SWA" if swa else "") + (" + EMA" if ema else "")
                + (" + loss-scale skip" if scaler else ""),
            })  # fmt: skip
        specs.append({
            "kernel": "adamw_gradnorm", "fn": _sumsq_kernel,
            "signature": {"g_ptr": f"*{gdt}", "partial_ptr": "*fp32", "scale_ptr": "*fp32",
                          "n_elements": "i32", "HAS_SCALE": "constexpr", "BLOCK_SIZE": "constexpr"},
            "constexprs": {"HAS_SCALE": False, "BLOCK_SIZE": NORM_BLOCK}, "num_warps": NUM_WARPS,
            "divisible": ["g_ptr", "partial_ptr", "n_elements"], "dtype": gdt,
            "hidden": NORM_BLOCK, "elems_per_iter": NORM_BLOCK, "bytes_per_elem": gbytes,
            "note": f"{gdt} grads, per-program partial sums of squares",
        })  # fmt: skip
    return specs
