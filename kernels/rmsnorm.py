"""RMSNorm  y = x * rsqrt(mean(x^2, -1) + eps) * w  (row-wise, fp32 statistics), fused in Triton.

Refs: Zhang & Sennrich 2019 (RMSNorm); the Triton layer-norm tutorial (05) for the partial-dw
reduction pattern. Anatomy (spec/style.md §2.3): jit kernels, plain launchers (`rmsnorm_fwd`,
`rmsnorm_bwd`, no autograd, so bench can time them), `RMSNormFunction`, public `rms_norm`.

Design notes:
- Forward: one program per row, BLOCK_N = next_pow2(N); writes y (x.dtype) and rstd (fp32, one per
  row), which is all the backward needs besides x and w (no y or normalized x is saved).
- Backward dx kernel: a fixed grid of about 8 programs per SM, each walking a run of rows.
  It writes dx and keeps an fp32 dw accumulator in registers, stored once per program as a row of
  a (programs, N) partials buffer. `_rmsnorm_bwd_dw_kernel` then sums those rows in a fixed order.
  No atomics, so dw is bitwise reproducible; and with ~8 waves of programs the dx pass is not
  starved as it is when one program per SM walks thousands of rows (spec/anchors.md §1.1, §3).
- Every load is upcast to fp32 right away: the interpreter emulates bf16 arithmetic poorly and on
  the GPU fp32 math is free next to the memory traffic anyway.
- float64 inputs are rejected (TypeError) rather than silently downcast: use
  `kernels.reference.rms_norm_ref` for float64 work (the tests do, as the oracle).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import use_triton
from .reference import rms_norm_ref

MAX_N = 65536
_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Programs per SM for the dx/dw-partial kernel: enough waves to hide latency, few enough that the
# partials buffer (programs x N fp32) stays small next to x and dy.
_PROGRAMS_PER_SM = 8
_H100_SMS = 132
# Column reduce tile for the dw kernel: BLOCK_P partial rows x BLOCK_C columns per iteration.
_DW_BLOCK_P = 32
_DW_BLOCK_C = 128


@triton.jit
def _rmsnorm_fwd_kernel(
    Y_ptr, X_ptr, W_ptr, RSTD_ptr, stride_x_row, stride_y_row, N, eps, BLOCK_N: tl.constexpr
):
    # int64 before stride math: rows * stride overflows int32 past 2^31 elements.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X_ptr + row * stride_x_row + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # Masked lanes hold 0 so they do not disturb the sum; divide by the true N, not BLOCK_N.
    mean_sq = tl.sum(x * x, axis=0) / N
    rstd = 1.0 / tl.sqrt(mean_sq + eps)
    y = x * rstd * w
    tl.store(RSTD_ptr + row, rstd)
    tl.store(Y_ptr + row * stride_y_row + cols, y.to(Y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_bwd_dx_kernel(
    DX_ptr, DY_ptr, X_ptr, W_ptr, RSTD_ptr, DWP_ptr,
    stride_x_row, stride_dy_row, stride_dx_row, stride_dwp_row,
    M, N, rows_per_program, eps,
    BLOCK_N: tl.constexpr, ONE_COL: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        x = tl.load(X_ptr + row * stride_x_row + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY_ptr + row * stride_dy_row + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD_ptr + row)
        xhat = x * rstd
        # dw += dy * xhat first so dy is dead before the dx math (fewer live registers at 16k).
        dw_acc += dy * xhat
        # w is re-read per row (an L1/L2 hit) rather than held: registers are the scarce resource
        # here, since dw_acc already pins one fp32 register per column per thread.
        w = tl.load(W_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        g = dy * w
        # y = xhat * w, xhat = x * rstd  =>  dx = rstd * (g - xhat * mean(g * xhat)).
        c = tl.sum(g * xhat, axis=0) / N
        # For N == 1, g is parallel to x and g - xhat*c cancels to ~eps/x^2 of g: fp32 loses
        # all digits. There 1 - xhat^2 = eps * rstd^2 exactly, so use that closed form instead.
        if ONE_COL:
            dx = g * (eps * rstd * rstd * rstd)
        else:
            dx = (g - xhat * c) * rstd
        tl.store(DX_ptr + row * stride_dx_row + cols, dx.to(DX_ptr.dtype.element_ty), mask=mask)
    tl.store(DWP_ptr + pid * stride_dwp_row + cols, dw_acc, mask=mask)


@triton.jit
def _rmsnorm_bwd_dw_kernel(
    DW_ptr, DWP_ptr, stride_dwp_row, P, N, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr
):
    # Each program owns BLOCK_C columns and sums all P partial rows in a fixed order: deterministic.
    pid = tl.program_id(0).to(tl.int64)
    cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < N
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        m = (rows[:, None] < P) & cmask[None, :]
        ptrs = DWP_ptr + rows[:, None].to(tl.int64) * stride_dwp_row + cols[None, :]
        acc += tl.load(ptrs, mask=m, other=0.0)
    dw = tl.sum(acc, axis=0)
    tl.store(DW_ptr + cols, dw.to(DW_ptr.dtype.element_ty), mask=cmask)


def _num_warps(block_n: int) -> int:
    """Row-kernel heuristic: ~8-16 elements per thread, capped at 16 warps (see module notes)."""
    if block_n >= 8192:
        return 16
    if block_n >= 2048:
        return 8
    return 4


def _num_warps_bwd(block_n: int, itemsize: int) -> int:
    """Warps for the dx kernel, chosen from the sm_90 compile report (no spills at 768..16384).

    dw_acc pins one fp32 register per column per thread, so wide rows need more threads; at 16k
    fp32 needs 32 warps (16 columns/thread) while 16-bit inputs fit 16 warps and spill at 32.
    """
    if block_n >= 32768 or (block_n >= 16384 and itemsize == 4):
        return 32
    return _num_warps(block_n)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    # Interpreter: mimic an H100 so the CPU tests exercise the same multi-row-per-program logic.
    return _H100_SMS


def _check(x: torch.Tensor, w: torch.Tensor) -> None:
    """Validate inputs with clear messages instead of failing inside Triton."""
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise TypeError("rms_norm: x and weight must be torch.Tensor")
    if x.dtype not in _X_DTYPES:
        raise TypeError(
            f"rms_norm: x dtype {x.dtype} unsupported (float32, bfloat16, float16; "
            "use kernels.reference.rms_norm_ref for float64)"
        )
    if w.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"rms_norm: weight dtype {w.dtype} must be float32 or x's dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError("rms_norm: x must have at least one dimension")
    if w.dim() != 1 or w.shape[0] != x.shape[-1]:
        raise ValueError(
            f"rms_norm: weight shape {tuple(w.shape)} must be ({x.shape[-1]},) = x's last dim"
        )
    if x.shape[-1] < 1 or x.shape[-1] > MAX_N:
        raise ValueError(f"rms_norm: last dim {x.shape[-1]} must be in [1, {MAX_N}]")
    if x.device != w.device:
        raise ValueError(f"rms_norm: x on {x.device} but weight on {w.device}")


def rmsnorm_fwd(
    x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        x: (..., N) fp32/bf16/fp16.
        w: (N,) fp32 or x.dtype.
        eps: added to mean(x^2).

    Returns:
        y: (..., N) in x.dtype; rstd: (M,) fp32, M = numel / N.
    """
    _check(x, w)
    shape = x.shape
    N = shape[-1]
    x2 = x.reshape(-1, N)  # (M, N); copies only if the last dim is strided
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    w = w.contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M > 0:
        block_n = triton.next_power_of_2(N)
        _rmsnorm_fwd_kernel[(M,)](
            y, x2, w, rstd, x2.stride(0), y.stride(0), N, float(eps),
            BLOCK_N=block_n, num_warps=_num_warps(block_n),
        )  # fmt: skip
    return y.reshape(shape), rstd


def rmsnorm_bwd(
    dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernels: dx (x.dtype) and dw (w.dtype), dw reduced deterministically.

    Args:
        dy: (..., N) gradient of y, same shape as x.
        x: (..., N) forward input.
        w: (N,) weight.
        rstd: (M,) fp32 from `rmsnorm_fwd`.
        eps: the forward's eps (only used for the exact last-dim-1 case).
    """
    _check(x, w)
    if dy.shape != x.shape:
        raise ValueError(f"rms_norm backward: dy shape {tuple(dy.shape)} != x {tuple(x.shape)}")
    shape = x.shape
    N = shape[-1]
    x2 = x.reshape(-1, N)
    dy2 = dy.reshape(-1, N)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if dy2.stride(-1) != 1:
        dy2 = dy2.contiguous()
    if dy2.dtype != x.dtype:
        dy2 = dy2.to(x.dtype)
    w = w.contiguous()
    M = x2.shape[0]
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return dx.reshape(shape), torch.zeros_like(w)
    block_n = triton.next_power_of_2(N)
    n_prog = min(M, _PROGRAMS_PER_SM * _num_sms(x.device))
    rows_per_program = triton.cdiv(M, n_prog)
    n_prog = triton.cdiv(M, rows_per_program)  # drop programs that would get no rows
    partials = torch.empty((n_prog, N), dtype=torch.float32, device=x.device)
    _rmsnorm_bwd_dx_kernel[(n_prog,)](
        dx, dy2, x2, w, rstd, partials,
        x2.stride(0), dy2.stride(0), dx.stride(0), partials.stride(0),
        M, N, rows_per_program, float(eps),
        BLOCK_N=block_n, ONE_COL=N == 1, num_warps=_num_warps_bwd(block_n, x.element_size()),
    )  # fmt: skip
    dw = torch.empty((N,), dtype=w.dtype, device=w.device)
    _rmsnorm_bwd_dw_kernel[(triton.cdiv(N, _DW_BLOCK_C),)](
        dw, partials, partials.stride(0), n_prog, N,
        BLOCK_P=_DW_BLOCK_P, BLOCK_C=_DW_BLOCK_C, num_warps=4,
    )  # fmt: skip
    return dx.reshape(shape), dw


class RMSNormFunction(torch.autograd.Function):
    """Autograd glue: saves only x, w and per-row rstd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = rmsnorm_fwd(x, w, eps)
        ctx.save_for_backward(x, w, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, w, rstd = ctx.saved_tensors
        dx, dw = rmsnorm_bwd(dy, x, w, rstd, ctx.eps)
        return dx, dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: Triton on CUDA (or under TRITON_INTERPRET=1), else the reference.

    Args:
        x: (..., N) fp32/bf16/fp16, N <= 65536.
        weight: (N,) fp32 or x.dtype.
        eps: added to mean(x^2) before the rsqrt.

    Returns:
        (..., N) tensor in x.dtype.
    """
    _check(x, weight)
    if use_triton(x, weight):
        return RMSNormFunction.apply(x, weight, float(eps))
    return rms_norm_ref(x, weight, eps)


def aot_specs() -> list[dict]:
    """Compile specs for `kernels.aot`: fwd and bwd kernels, bf16/fp32, hidden 768/4096/16384.

    Row strides and N are declared divisible by 16 (true for the model's hidden sizes): that is what
    lets the compiler prove 16-byte alignment and emit 128-bit loads.
    """
    specs: list[dict] = []
    for dtype in ("bf16", "fp32"):
        pt = f"*{dtype}"
        for hidden in (768, 4096, 16384):
            block_n = triton.next_power_of_2(hidden)
            nw = _num_warps(block_n)
            specs.append({
                "kernel": "rmsnorm_fwd", "fn": _rmsnorm_fwd_kernel,
                "signature": {"Y_ptr": pt, "X_ptr": pt, "W_ptr": pt, "RSTD_ptr": "*fp32",
                              "stride_x_row": "i32", "stride_y_row": "i32", "N": "i32",
                              "eps": "fp32", "BLOCK_N": "constexpr"},
                "constexprs": {"BLOCK_N": block_n}, "num_warps": nw,
                "divisible": ["Y_ptr", "X_ptr", "W_ptr", "RSTD_ptr", "stride_x_row",
                              "stride_y_row", "N"],
                "dtype": dtype, "hidden": hidden,
                "note": "one row per program; ideal 2*itemsize B/elem",
            })  # fmt: skip
            specs.append({
                "kernel": "rmsnorm_bwd_dx", "fn": _rmsnorm_bwd_dx_kernel,
                "signature": {"DX_ptr": pt, "DY_ptr": pt, "X_ptr": pt, "W_ptr": pt,
                              "RSTD_ptr": "*fp32", "DWP_ptr": "*fp32",
                              "stride_x_row": "i32", "stride_dy_row": "i32",
                              "stride_dx_row": "i32", "stride_dwp_row": "i32",
                              "M": "i32", "N": "i32", "rows_per_program": "i32",
                              "eps": "fp32", "BLOCK_N": "constexpr", "ONE_COL": "constexpr"},
                "constexprs": {"BLOCK_N": block_n, "ONE_COL": False},
                "num_warps": _num_warps_bwd(block_n, 4 if dtype == "fp32" else 2),
                "divisible": ["DX_ptr", "DY_ptr", "X_ptr", "W_ptr", "RSTD_ptr", "DWP_ptr",
                              "stride_x_row", "stride_dy_row", "stride_dx_row",
                              "stride_dwp_row", "N"],
                "dtype": dtype, "hidden": hidden,
                "note": "~8 programs/SM walking rows; fp32 dw partial row per program",
            })  # fmt: skip
            specs.append({
                "kernel": "rmsnorm_bwd_dw", "fn": _rmsnorm_bwd_dw_kernel,
                "signature": {"DW_ptr": pt, "DWP_ptr": "*fp32", "stride_dwp_row": "i32",
                              "P": "i32", "N": "i32", "BLOCK_P": "constexpr",
                              "BLOCK_C": "constexpr"},
                "constexprs": {"BLOCK_P": _DW_BLOCK_P, "BLOCK_C": _DW_BLOCK_C}, "num_warps": 4,
                "divisible": ["DW_ptr", "DWP_ptr", "stride_dwp_row", "N"],
                "dtype": dtype, "hidden": hidden,
                "note": "deterministic column reduce of the partials, no atomics",
            })  # fmt: skip
    return specs
