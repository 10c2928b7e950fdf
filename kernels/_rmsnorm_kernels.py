"""RMSNorm Triton kernels and their launchers (imported lazily by `kernels.rmsnorm`: needs triton).

Forward: one program per row, BLOCK_N = next_pow2(N); writes y (x.dtype) and rstd (fp32, one per
row), which is all the backward needs besides x and w.

Backward: the dx kernel runs one wave of programs, as many as can be resident at once (SMs x the
blocks per SM that its registers and shared memory allow), each walking a run of rows. It writes dx
and keeps an fp32 dw accumulator in registers, stored once per program as a row of a
(programs, N) partials buffer; `_rmsnorm_bwd_dw_kernel` then sums those rows in a fixed order. No
atomics, so dw is bitwise reproducible. Sizing the grid to one resident wave keeps the partials
buffer (written, then read: 8 B x programs x N) small beside the 3 x itemsize x M x N of x, dy, dx:
the persistent-kernel pattern of Liger-Kernel's RMSNorm backward
(linkedin/Liger-Kernel, src/liger_kernel/ops/rms_norm.py) and of the Triton layer-norm tutorial
(triton-lang/triton, python/tutorials/05-layer-norm.py), without their atomics or locks.
Every load is upcast to fp32 right away: the interpreter emulates bf16 arithmetic poorly and on the
GPU fp32 math is free next to the memory traffic.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._utils import SM90_LIMITS, ctas_per_sm

# Column reduce tile for the dw kernel: BLOCK_P partial rows x BLOCK_C columns per iteration.
_DW_BLOCK_P = 32
_DW_BLOCK_C = 128
INTERPRETER_SMS = 4


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


def num_warps_fwd(block_n: int) -> int:
    """Row-kernel heuristic: ~8-16 elements per thread, capped at 16 warps."""
    if block_n >= 8192:
        return 16
    if block_n >= 2048:
        return 8
    return 4


def num_warps_bwd(block_n: int, itemsize: int) -> int:
    """Warps for the dx kernel, chosen from the sm_90 compile report (no spills at 768..16384).

    dw_acc pins one fp32 register per column per thread, so wide rows need more threads; at 16k
    fp32 needs 32 warps (16 columns/thread) while 16-bit inputs fit 16 warps and spill at 32.
    """
    if block_n >= 32768 or (block_n >= 16384 and itemsize == 4):
        return 32
    return num_warps_fwd(block_n)


def estimated_regs(block_n: int, num_warps: int) -> int:
    """Registers per thread of the dx kernel where no compiled kernel can be asked (the CPU
    interpreter): ~32 + 3 per column a thread holds, a fit to the sm_90 compile report."""
    return min(255, 32 + 3 * block_n // (32 * num_warps))


@functools.lru_cache(maxsize=64)
def _cuda_dx_occupancy(device_index: int, dtype: torch.dtype, w_dtype: torch.dtype,
                       block_n: int, num_warps: int) -> tuple[int, int]:  # fmt: skip
    """(SMs, resident dx blocks per SM) from the kernel compiled for this GPU."""
    props = torch.cuda.get_device_properties(device_index)
    x = torch.empty(1, dtype=dtype, device=f"cuda:{device_index}")
    w = torch.empty(1, dtype=w_dtype, device=x.device)
    f = torch.empty(1, dtype=torch.float32, device=x.device)
    k = _rmsnorm_bwd_dx_kernel.warmup(
        x, x, x, w, f, f, block_n, block_n, block_n, block_n, 17, block_n, 3, 1e-6,
        BLOCK_N=block_n, ONE_COL=False, num_warps=num_warps, grid=(1,),
    )  # fmt: skip
    k._init_handles()  # loads the binary, which is what fills in n_regs (M, rows: neither 1 nor
    # a multiple of 16, so Triton specializes them as in a typical launch)
    limits = {
        "regs": getattr(props, "regs_per_multiprocessor", SM90_LIMITS["regs"]),
        "threads": getattr(props, "max_threads_per_multi_processor", SM90_LIMITS["threads"]),
        "ctas": SM90_LIMITS["ctas"],
        "shared": getattr(props, "shared_memory_per_multiprocessor", SM90_LIMITS["shared"]),
    }
    resident = ctas_per_sm(k.n_regs, k.metadata.shared, num_warps, limits)
    return props.multi_processor_count, resident


def occupancy(x: torch.Tensor, w: torch.Tensor, block_n: int, num_warps: int) -> tuple[int, int]:
    """(SMs, resident dx blocks per SM) on x's device. The interpreter runs programs one after
    another on the CPU, so it gets a few SMs of an H100 (estimated registers): that keeps the
    CPU tests fast while every program still walks several rows."""
    if x.device.type == "cuda":
        idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
        return _cuda_dx_occupancy(idx, x.dtype, w.dtype, block_n, num_warps)
    return INTERPRETER_SMS, ctas_per_sm(estimated_regs(block_n, num_warps), 0, num_warps)


def dx_programs(m: int, x: torch.Tensor, w: torch.Tensor, block_n: int, num_warps: int) -> int:
    """Programs of the dx kernel: one resident wave, SMs x resident blocks per SM, at most M."""
    sms, resident = occupancy(x, w, block_n, num_warps)
    return max(1, min(m, sms * resident))


def bwd_traffic(m: int, n: int, itemsize: int, programs: int) -> dict[str, float]:
    """HBM bytes of the backward at M x N: x, dy read and dx written (``data_bytes``), and the
    fp32 dw partials written by the dx kernel and read back by the dw kernel (``partial_bytes``)."""
    data = 3 * m * n * itemsize
    partial = 2 * 4 * programs * n
    return {
        "data_bytes": data,
        "partial_bytes": partial,
        "partial_share": partial / data,
        "bytes_per_elem": (data + partial) / (m * n),
    }


def rmsnorm_fwd(
    x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel (inputs already checked). Returns y (x's shape and dtype) and
    rstd (M,) fp32, M = numel / N."""
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
            BLOCK_N=block_n, num_warps=num_warps_fwd(block_n),
        )  # fmt: skip
    return y.reshape(shape), rstd


def rmsnorm_bwd(
    dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernels: dx (x.dtype) and dw (w.dtype), dw reduced deterministically."""
    shape = x.shape
    N = shape[-1]
    x2 = x.reshape(-1, N)
    dy2 = dy.reshape(-1, N)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if dy2.dtype != x.dtype:
        dy2 = dy2.to(x.dtype)
    if dy2.stride(-1) != 1:
        dy2 = dy2.contiguous()
    w = w.contiguous()
    M = x2.shape[0]
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return dx.reshape(shape), torch.zeros_like(w)
    block_n = triton.next_power_of_2(N)
    warps = num_warps_bwd(block_n, x.element_size())
    n_prog = dx_programs(M, x2, w, block_n, warps)
    rows_per_program = triton.cdiv(M, n_prog)
    n_prog = triton.cdiv(M, rows_per_program)  # drop programs that would get no rows
    partials = torch.empty((n_prog, N), dtype=torch.float32, device=x.device)
    _rmsnorm_bwd_dx_kernel[(n_prog,)](
        dx, dy2, x2, w, rstd, partials,
        x2.stride(0), dy2.stride(0), dx.stride(0), partials.stride(0),
        M, N, rows_per_program, float(eps),
        BLOCK_N=block_n, ONE_COL=N == 1, num_warps=warps,
    )  # fmt: skip
    dw = torch.empty((N,), dtype=w.dtype, device=w.device)
    _rmsnorm_bwd_dw_kernel[(triton.cdiv(N, _DW_BLOCK_C),)](
        dw, partials, partials.stride(0), n_prog, N,
        BLOCK_P=_DW_BLOCK_P, BLOCK_C=_DW_BLOCK_C, num_warps=4,
    )  # fmt: skip
    return dx.reshape(shape), dw


def aot_specs(dtypes: tuple[str, ...] = ("bf16", "fp32")) -> list[dict]:
    """Compile specs for `kernels.aot`: fwd and bwd kernels, per dtype, hidden 768/4096/16384.

    Row strides and N are declared divisible by 16 (true for the model's hidden sizes): that is what
    lets the compiler prove 16-byte alignment and emit 128-bit loads.
    """
    specs: list[dict] = []
    for dtype in dtypes:
        e, pt = 4 if dtype == "fp32" else 2, f"*{dtype}"
        for hidden in (768, 4096, 16384):
            block_n = triton.next_power_of_2(hidden)
            specs.append({
                "kernel": "rmsnorm_fwd", "fn": _rmsnorm_fwd_kernel,
                "signature": {"Y_ptr": pt, "X_ptr": pt, "W_ptr": pt, "RSTD_ptr": "*fp32",
                              "stride_x_row": "i32", "stride_y_row": "i32", "N": "i32",
                              "eps": "fp32", "BLOCK_N": "constexpr"},
                "constexprs": {"BLOCK_N": block_n}, "num_warps": num_warps_fwd(block_n),
                "divisible": ["Y_ptr", "X_ptr", "W_ptr", "RSTD_ptr", "stride_x_row",
                              "stride_y_row", "N"],
                "dtype": dtype, "hidden": hidden, "elems_per_iter": hidden,
                "bytes_per_elem": 2 * e, "note": "one row per program; reads x, writes y",
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
                "num_warps": num_warps_bwd(block_n, e),
                "divisible": ["DX_ptr", "DY_ptr", "X_ptr", "W_ptr", "RSTD_ptr", "DWP_ptr",
                              "stride_x_row", "stride_dy_row", "stride_dx_row",
                              "stride_dwp_row", "N"],
                "dtype": dtype, "hidden": hidden, "elems_per_iter": hidden,
                "bytes_per_elem": 3 * e,
                "note": "one resident wave walking rows; fp32 dw partial row per program",
            })  # fmt: skip
            specs.append({
                "kernel": "rmsnorm_bwd_dw", "fn": _rmsnorm_bwd_dw_kernel,
                "signature": {"DW_ptr": pt, "DWP_ptr": "*fp32", "stride_dwp_row": "i32",
                              "P": "i32", "N": "i32", "BLOCK_P": "constexpr",
                              "BLOCK_C": "constexpr"},
                "constexprs": {"BLOCK_P": _DW_BLOCK_P, "BLOCK_C": _DW_BLOCK_C}, "num_warps": 4,
                "divisible": ["DW_ptr", "DWP_ptr", "stride_dwp_row", "N"],
                "dtype": dtype, "hidden": hidden, "elems_per_iter": _DW_BLOCK_P * _DW_BLOCK_C,
                "bytes_per_elem": 4,
                "note": "deterministic column reduce of the fp32 partials, no atomics",
            })  # fmt: skip
    return specs
