"""RMSNorm Triton kernels and their launchers (imported lazily by `kernels.rmsnorm`: needs triton).

Forward: each program normalises BLOCK_M rows of BLOCK_N = next_pow2(N) columns, so short rows
(N <= 1024) still give every program a few KB to move instead of one 2 KB row; it writes y
(x.dtype) and rstd (fp32, one per row), which is all the backward needs besides x and w. With a
residual (``HAS_RES``) it first forms s = x + residual and writes s too: the pre-norm block's
residual add fused into its norm, as flash-attn's ``_layer_norm_fwd_1pass_kernel`` does
(Dao-AILab/flash-attention, flash_attn/ops/triton/layer_norm.py), so x and the residual are read
once and s and y written once.

Backward: the dx kernel runs one wave of programs, as many as can be resident at once (SMs x the
blocks per SM that its registers and shared memory allow), each walking a run of rows. It writes dx
(plus, fused, the incoming grad of s and a second copy of dx in the branch's dtype) and keeps an
fp32 dw accumulator in registers, stored once per program as a row of a (programs, N) partials
buffer; `_rmsnorm_bwd_dw_kernel` then sums those rows in a fixed order. No atomics, so dw is
bitwise reproducible. Sizing the grid to one resident wave keeps the partials buffer small beside
the 3 x itemsize x M x N of x, dy, dx: the persistent-kernel pattern of Liger-Kernel's RMSNorm
backward (linkedin/Liger-Kernel, src/liger_kernel/ops/rms_norm.py) and of the Triton layer-norm
tutorial (triton-lang/triton, python/tutorials/05-layer-norm.py), without their atomics or locks.
The dw reduce splits the columns so that its grid covers every SM at least twice: with 128-column
blocks a 4096-wide norm had 32 programs, a quarter of an H100, reading the partials.

Rows too wide for one program's registers (over 16k columns; over 8k for the fused residual's dx,
which also writes the narrower branch grad) are shared by neighbouring programs, one slice of
columns each: each sums the whole row (the forward's squares, the backward's dy * w * xhat) slice
by slice in one fixed order, so all get the same value, then writes its own slice. The other
slices come from L2, where the neighbours have just read them; HBM traffic is unchanged and the
sm_90 compile report shows no spills up to 32k columns (`kernels.aot`).

Launchers take the kernels through ``launch`` (identity in eager mode, ``torch.library.wrap_triton``
inside a ``triton_op`` body, so Inductor sees the kernels) and a ``Plan``: grids, block sizes and
warps computed once per shape. Every load is upcast to fp32 right away: the interpreter emulates
bf16 arithmetic poorly and on the GPU fp32 math is free next to the memory traffic.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._utils import SM90_LIMITS, ctas_per_sm, no_fake

# Elements the dw reduce loads per iteration (BLOCK_P partial rows x BLOCK_C columns).
_DW_TILE = 4096
INTERPRETER_SMS = 4
# Forward rows per program: enough that one program moves >= 4096 elements, at most 16 rows.
_FWD_TILE = 4096
_FWD_MAX_ROWS = 16
# The widest row one program holds in registers without spilling on sm_90 (the `kernels.aot`
# report): the forward at 16 warps, the dx kernel at 16 (16-bit) or 32 (fp32) warps, and half that
# for the fused residual's dx, which also converts dx for the narrower branch grad (it spilled a
# 4-byte value at 16k columns). A wider row is shared by neighbouring programs, one slice each
# (SPLIT in the kernels): forward slices of FWD_SLICE, dx slices of DX_SPLIT_SLICE (the dx
# kernel's row sum over the other slices needs registers of its own: 16k slices spill there).
FWD_SLICE = 16384
DX_SLICE = 16384
DX_SLICE_NARROW = 8192
DX_SPLIT_SLICE = 8192


@triton.jit
def _stream_slice(X_ptr, R_ptr, S_ptr, x_off, r_off, cols, mask, HAS_RES: tl.constexpr):
    """Columns `cols` of one row of x, or with a residual of s = x + residual rounded to the
    stream's dtype (what is stored and normalised), as fp32."""
    v = tl.load(X_ptr + x_off + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R_ptr + r_off + cols, mask=mask, other=0.0)
        v = (v + r.to(tl.float32)).to(S_ptr.dtype.element_ty).to(tl.float32)
    return v


@triton.jit
def _rmsnorm_fwd_kernel(
    Y_ptr, S_ptr, X_ptr, R_ptr, W_ptr, RSTD_ptr,
    stride_x_row, stride_r_row, stride_y_row, M, N, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_RES: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    if SPLIT == 1:
        # int64 before stride math: rows * stride overflows int32 past 2^31 elements.
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        rmask = rows < M
        mask = rmask[:, None] & (cols < N)[None, :]
        x = tl.load(X_ptr + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        if HAS_RES:
            # s = x + residual in fp32, stored in the stream's dtype; the norm reads the stored
            # value (rounded), exactly as norm(x + residual) does in torch.
            r = tl.load(R_ptr + rows[:, None] * stride_r_row + cols[None, :], mask=mask, other=0.0)
            s = (x + r.to(tl.float32)).to(S_ptr.dtype.element_ty)
            tl.store(S_ptr + rows[:, None] * stride_r_row + cols[None, :], s, mask=mask)
            x = s.to(tl.float32)
        w = tl.load(W_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        # Masked lanes hold 0 so they do not disturb the sum; divide by the true N, not BLOCK_N.
        mean_sq = tl.sum(x * x, axis=1) / N
        rstd = 1.0 / tl.sqrt(mean_sq + eps)
        y = x * rstd[:, None] * w[None, :]
        tl.store(RSTD_ptr + rows, rstd, mask=rmask)
        y_ptrs = Y_ptr + rows[:, None] * stride_y_row + cols[None, :]
        tl.store(y_ptrs, y.to(Y_ptr.dtype.element_ty), mask=mask)
    else:
        # A row too wide for one program's registers: SPLIT neighbouring programs share it, each
        # writing one slice of BLOCK_N columns. Each sums the squares of the whole row, slice by
        # slice in the same order (so every slice gets the same rstd), then reloads its own slice
        # (a cache hit) to normalise it; only the first writes rstd.
        pid = tl.program_id(0).to(tl.int64)
        row = pid // SPLIT
        part = pid % SPLIT
        offs = tl.arange(0, BLOCK_N)
        x_off = row * stride_x_row
        r_off = row * stride_r_row
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for j in range(SPLIT):
            cj = j * BLOCK_N + offs
            v = _stream_slice(X_ptr, R_ptr, S_ptr, x_off, r_off, cj, cj < N, HAS_RES)
            acc += v * v
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        cols = part * BLOCK_N + offs
        mask = cols < N
        v = _stream_slice(X_ptr, R_ptr, S_ptr, x_off, r_off, cols, mask, HAS_RES)
        if HAS_RES:
            tl.store(S_ptr + r_off + cols, v.to(S_ptr.dtype.element_ty), mask=mask)
        w = tl.load(W_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = v * rstd * w
        tl.store(Y_ptr + row * stride_y_row + cols, y.to(Y_ptr.dtype.element_ty), mask=mask)
        tl.store(RSTD_ptr + row, rstd, mask=part == 0)


@triton.jit
def _row_dot(X_ptr, DY_ptr, W_ptr, rstd, N, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
    """sum(dy * w * x * rstd) over one row, slice by slice in a fixed order (`SPLIT` slices of
    BLOCK_N columns; X_ptr, DY_ptr point at the row)."""
    offs = tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in range(SPLIT):
        cj = j * BLOCK_N + offs
        mj = cj < N
        x = tl.load(X_ptr + cj, mask=mj, other=0.0).to(tl.float32)
        dy = tl.load(DY_ptr + cj, mask=mj, other=0.0).to(tl.float32)
        w = tl.load(W_ptr + cj, mask=mj, other=0.0).to(tl.float32)
        acc += (dy * w) * (x * rstd)
    return tl.sum(acc, axis=0)


@triton.jit
def _rmsnorm_bwd_dx_kernel(
    DX_ptr, DB_ptr, DY_ptr, DS_ptr, X_ptr, W_ptr, RSTD_ptr, DWP_ptr,
    stride_x_row, stride_dy_row, stride_dx_row, stride_dwp_row,
    M, N, rows_per_program, eps,
    BLOCK_N: tl.constexpr, ONE_COL: tl.constexpr, HAS_DS: tl.constexpr, HAS_DB: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    # Fused residual (HAS_DS / HAS_DB): x is s = x + residual, DS the grad s gets from its other
    # use (the next residual add), added to dx; DB a copy of dx in the branch's dtype.
    # SPLIT > 1: rows too wide for one program's registers; SPLIT neighbouring programs walk the
    # same rows, each owning a slice of BLOCK_N columns (its dx and dw), each first summing the
    # row's dy * w * xhat over all slices in one order (`_row_dot`; the other slices come from
    # L2, where the neighbours just read them from HBM).
    pid = tl.program_id(0).to(tl.int64)
    if SPLIT == 1:
        group = pid
        cols = tl.arange(0, BLOCK_N)
    else:
        group = pid // SPLIT
        cols = (pid % SPLIT) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = group * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        if SPLIT > 1:
            rstd = tl.load(RSTD_ptr + row)
            xr, dyr = X_ptr + row * stride_x_row, DY_ptr + row * stride_dy_row
            c = _row_dot(xr, dyr, W_ptr, rstd, N, BLOCK_N, SPLIT) / N
        x = tl.load(X_ptr + row * stride_x_row + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY_ptr + row * stride_dy_row + cols, mask=mask, other=0.0).to(tl.float32)
        if SPLIT == 1:
            rstd = tl.load(RSTD_ptr + row)
        xhat = x * rstd
        # dw += dy * xhat first so dy is dead before the dx math (fewer live registers at 16k).
        dw_acc += dy * xhat
        # w is re-read per row (an L1/L2 hit) rather than held: registers are the scarce resource
        # here, since dw_acc already pins one fp32 register per column per thread.
        w = tl.load(W_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        g = dy * w
        # y = xhat * w, xhat = x * rstd  =>  dx = rstd * (g - xhat * mean(g * xhat)).
        if SPLIT == 1:
            c = tl.sum(g * xhat, axis=0) / N
        # For N == 1, g is parallel to x and g - xhat*c cancels to ~eps/x^2 of g: fp32 loses
        # all digits. There 1 - xhat^2 = eps * rstd^2 exactly, so use that closed form instead.
        if ONE_COL:
            dx = g * (eps * rstd * rstd * rstd)
        else:
            dx = (g - xhat * c) * rstd
        if HAS_DS:
            ds = tl.load(DS_ptr + row * stride_dx_row + cols, mask=mask, other=0.0)
            dx += ds.to(tl.float32)
        tl.store(DX_ptr + row * stride_dx_row + cols, dx.to(DX_ptr.dtype.element_ty), mask=mask)
        if HAS_DB:
            # The narrower branch grad: at most 4 contiguous elements per thread, the fp32 tensors'
            # layout (a 64-bit store for bf16). Asked for 128-bit stores, the compiler reshuffles
            # dx through shared memory, which spills at 16k columns and 32 warps.
            db_cols = tl.max_contiguous(cols, 4)
            db = dx.to(DB_ptr.dtype.element_ty)
            tl.store(DB_ptr + row * stride_dx_row + db_cols, db, mask=mask)
    tl.store(DWP_ptr + group * stride_dwp_row + cols, dw_acc, mask=mask)


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


def slices(block_n: int, cap: int) -> int:
    """Programs sharing a row of next_pow2(N) = block_n columns, for slices of at most `cap`."""
    return max(1, block_n // cap)


def dx_slices(block_n: int, narrow: bool) -> int:
    """Programs sharing a row in the dx kernel: one up to DX_SLICE columns (DX_SLICE_NARROW when
    it also writes a narrower branch grad), else slices of DX_SPLIT_SLICE."""
    if block_n <= (DX_SLICE_NARROW if narrow else DX_SLICE):
        return 1
    return slices(block_n, DX_SPLIT_SLICE)


@functools.lru_cache(maxsize=64)
def _cuda_dx_occupancy(
    device_index: int,
    dtype: torch.dtype,
    w_dtype: torch.dtype,
    block_n: int,
    num_warps: int,
    split: int = 1,
) -> tuple[int, int]:
    """(SMs, resident dx blocks per SM) from the kernel compiled for this GPU."""
    props = torch.cuda.get_device_properties(device_index)
    x = torch.empty(1, dtype=dtype, device=f"cuda:{device_index}")
    w = torch.empty(1, dtype=w_dtype, device=x.device)
    f = torch.empty(1, dtype=torch.float32, device=x.device)
    k = _rmsnorm_bwd_dx_kernel.warmup(
        x, None, x, None, x, w, f, f, block_n, block_n, block_n, block_n, 17, block_n, 3, 1e-6,
        BLOCK_N=block_n, ONE_COL=False, HAS_DS=False, HAS_DB=False, SPLIT=split,
        num_warps=num_warps, grid=(1,),
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


def occupancy(
    x: torch.Tensor, w: torch.Tensor, block_n: int, num_warps: int, split: int = 1
) -> tuple[int, int]:
    """(SMs, resident dx blocks per SM) on x's device. The interpreter runs programs one after
    another on the CPU, so it gets a few SMs of an H100 (estimated registers): that keeps the
    CPU tests fast while every program still walks several rows."""
    if x.device.type == "cuda":
        idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
        # Compiling the probe kernel needs real tensors, also while torch.compile traces the
        # triton_op body with fake ones.
        with no_fake():
            return _cuda_dx_occupancy(idx, x.dtype, w.dtype, block_n, num_warps, split)
    return INTERPRETER_SMS, ctas_per_sm(estimated_regs(block_n, num_warps), 0, num_warps)


def dx_programs(
    m: int, x: torch.Tensor, w: torch.Tensor, block_n: int, num_warps: int, split: int = 1
) -> int:
    """Row groups of the dx kernel: one resident wave (SMs x resident blocks per SM programs,
    `split` of them per group), at most M."""
    sms, resident = occupancy(x, w, block_n, num_warps, split)
    return max(1, min(m, sms * resident // split))


def dw_block_c(n: int, sms: int) -> int:
    """Columns per program of the dw reduce: the widest power of two in [16, 128] whose grid still
    gives every SM two programs (at N = 4096 on 132 SMs: 16 columns, 256 programs). 16 fp32
    columns are 64 contiguous bytes per partial row, two full 32-byte sectors."""
    c = 128
    while c > 16 and triton.cdiv(n, c) < 2 * sms:
        c //= 2
    return c


class DxPlan(NamedTuple):
    """Launch constants of the dx kernel: `groups` row groups of `rows_per_program` rows, each
    walked by `split` programs owning a slice of `block` columns (grid = groups x split)."""

    grid: tuple[int]
    groups: int
    rows_per_program: int
    warps: int
    block: int
    split: int


class Plan(NamedTuple):
    """Launch constants of one (M, N, dtype, device): computed once, reused by every call."""

    M: int
    N: int
    block_n: int  # next_pow2(N)
    fwd_grid: tuple[int]
    block_m: int  # forward rows per program
    warps_fwd: int
    fwd_block: int  # forward columns per program (block_n, or a slice of a wide row)
    fwd_split: int  # forward programs per row (1, or several for a wide row)
    dx: DxPlan
    dx_narrow: DxPlan  # the fused residual's dx writing a narrower branch grad too
    dw_grid: tuple[int]
    block_p: int
    block_c: int


def dx_plan(m: int, n: int, x: torch.Tensor, w: torch.Tensor, narrow: bool) -> DxPlan:
    """The dx kernel's grid at M x N on x's device (`narrow`: writing a narrower branch grad)."""
    block_n = triton.next_power_of_2(n)
    split = 1 if n == 1 else dx_slices(block_n, narrow)
    block = block_n // split
    warps = num_warps_bwd(block, x.element_size())
    groups = dx_programs(m, x, w, block, warps, split)
    rows_per_program = triton.cdiv(max(m, 1), groups)
    groups = triton.cdiv(max(m, 1), rows_per_program)  # drop groups that would get no rows
    return DxPlan((groups * split,), groups, rows_per_program, warps, block, split)


def make_plan(m: int, n: int, x: torch.Tensor, w: torch.Tensor) -> Plan:
    """The grids and block sizes of the forward and backward kernels at M x N on x's device."""
    block_n = triton.next_power_of_2(n)
    fwd_split = slices(block_n, FWD_SLICE)
    fwd_block = block_n // fwd_split
    block_m = min(_FWD_MAX_ROWS, max(1, _FWD_TILE // block_n), triton.next_power_of_2(max(m, 1)))
    if fwd_split > 1:
        block_m = 1  # a shared row: one row per program
    dx = dx_plan(m, n, x, w, False)
    narrow = dx_plan(m, n, x, w, True) if dx_slices(block_n, True) != dx.split else dx
    sms = occupancy(x, w, dx.block, dx.warps, dx.split)[0]
    block_c = dw_block_c(n, sms)
    return Plan(
        M=m, N=n, block_n=block_n, fwd_grid=(triton.cdiv(m, block_m) * fwd_split,),
        block_m=block_m, warps_fwd=num_warps_fwd(block_m * fwd_block), fwd_block=fwd_block,
        fwd_split=fwd_split, dx=dx, dx_narrow=narrow, dw_grid=(triton.cdiv(n, block_c),),
        block_p=_DW_TILE // block_c, block_c=block_c,
    )  # fmt: skip


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


def _eager(kernel):
    return kernel


def rmsnorm_fwd(
    x: torch.Tensor,
    w: torch.Tensor,
    eps: float,
    plan: Plan,
    residual: torch.Tensor | None = None,
    launch=_eager,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel on contiguous x (..., N) (inputs checked, `plan` made for them).

    Returns y (..., N), rstd (M,) fp32 and, with a ``residual`` (x's shape, contiguous), the sum
    s = x + residual in the residual's dtype (None without); y has s's dtype then, else x's.
    """
    stream = x if residual is None else residual
    y = torch.empty_like(stream)
    s = None if residual is None else torch.empty_like(residual)
    rstd = torch.empty((plan.M,), dtype=torch.float32, device=x.device)
    if plan.M > 0:
        N = plan.N
        launch(_rmsnorm_fwd_kernel)[plan.fwd_grid](
            y, s, x, residual, w, rstd, N, N, N, plan.M, N, eps,
            BLOCK_M=plan.block_m, BLOCK_N=plan.fwd_block, HAS_RES=residual is not None,
            SPLIT=plan.fwd_split, num_warps=plan.warps_fwd,
        )  # fmt: skip
    return y, rstd, s


def rmsnorm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    rstd: torch.Tensor,
    eps: float,
    plan: Plan,
    ds: torch.Tensor | None = None,
    db_dtype: torch.dtype | None = None,
    launch=_eager,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward kernels on contiguous dy, x (any float dtype for dy; upcast in-kernel).

    Returns dx (x.dtype), dw (w.dtype, reduced deterministically) and, when ``db_dtype`` is given
    and differs from x's, dx again in that dtype (the fused residual's branch grad; else None).
    ``ds``: a gradient added to dx (the fused residual stream's grad from its other use).
    """
    dx = torch.empty_like(x)
    db = None
    if db_dtype is not None and db_dtype != x.dtype:
        db = torch.empty(x.shape, dtype=db_dtype, device=x.device)
    if plan.M == 0:
        return dx, torch.zeros_like(w), db
    # a narrower branch grad (written beside dx) leaves less register room per column
    dxp = plan.dx_narrow if db is not None and db.element_size() < x.element_size() else plan.dx
    N, P = plan.N, dxp.groups
    partials = torch.empty((P, N), dtype=torch.float32, device=x.device)
    launch(_rmsnorm_bwd_dx_kernel)[dxp.grid](
        dx, db, dy, ds, x, w, rstd, partials, N, N, N, N, plan.M, N, dxp.rows_per_program, eps,
        BLOCK_N=dxp.block, ONE_COL=N == 1, HAS_DS=ds is not None, HAS_DB=db is not None,
        SPLIT=dxp.split, num_warps=dxp.warps,
    )  # fmt: skip
    dw = torch.empty_like(w)
    launch(_rmsnorm_bwd_dw_kernel)[plan.dw_grid](
        dw, partials, N, P, N, BLOCK_P=plan.block_p, BLOCK_C=plan.block_c, num_warps=4
    )
    return dx, dw, db


def _fwd_spec(dtype: str, hidden: int, residual: bool) -> dict:
    """The forward kernel at ``hidden``; with ``residual``: an fp32 stream plus a ``dtype`` branch
    (the autocast training step), so x is ``dtype`` and s, y are fp32."""
    e, pt = (4 if dtype == "fp32" else 2), f"*{dtype}"
    block_n = triton.next_power_of_2(hidden)
    split = slices(block_n, FWD_SLICE)
    block = block_n // split
    block_m = 1 if split > 1 else max(1, min(_FWD_MAX_ROWS, _FWD_TILE // block_n))
    out = "*fp32" if residual else pt
    sig = {"Y_ptr": out, "S_ptr": "*fp32" if residual else "constexpr", "X_ptr": pt,
           "R_ptr": "*fp32" if residual else "constexpr", "W_ptr": "*fp32" if residual else pt,
           "RSTD_ptr": "*fp32", "stride_x_row": "i32", "stride_r_row": "i32",
           "stride_y_row": "i32", "M": "i32", "N": "i32", "eps": "fp32",
           "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "HAS_RES": "constexpr",
           "SPLIT": "constexpr"}  # fmt: skip
    consts = {"BLOCK_M": block_m, "BLOCK_N": block, "HAS_RES": residual, "SPLIT": split}
    if not residual:
        consts.update(S_ptr=None, R_ptr=None)
    div = ["Y_ptr", "X_ptr", "W_ptr", "RSTD_ptr", "stride_x_row", "stride_r_row",
           "stride_y_row", "N"] + (["S_ptr", "R_ptr"] if residual else [])  # fmt: skip
    what = "reads x, residual; writes s, y" if residual else "reads x, writes y"
    if split > 1:
        how = f"{split} programs per row, a {block}-column slice each (the row's sum from L2); "
    else:
        how = f"{block_m} rows per program; " if block_m > 1 else "one row per program; "
    return {
        "kernel": "add_rmsnorm_fwd" if residual else "rmsnorm_fwd",
        "fn": _rmsnorm_fwd_kernel,
        "signature": sig,
        "constexprs": consts,
        "num_warps": num_warps_fwd(block_m * block),
        "divisible": div,
        "dtype": dtype,
        "hidden": hidden,
        "elems_per_iter": block_m * min(hidden, block),
        "inner_repeat": split,
        "row_loop": False,
        "bytes_per_elem": e + 12 if residual else 2 * e,
        "note": how + what,
    }


def _dx_spec(dtype: str, hidden: int, residual: bool) -> dict:
    """The dx kernel; with ``residual``: fp32 stream s and incoming ds, and for a 16-bit branch
    its grad written too (an fp32 branch shares dx: no second copy)."""
    e, pt = (4 if dtype == "fp32" else 2), f"*{dtype}"
    block_n = triton.next_power_of_2(hidden)
    narrow = residual and dtype != "fp32"
    split = dx_slices(block_n, narrow)
    block = block_n // split
    xt = "*fp32" if residual else pt
    sig = {"DX_ptr": xt, "DB_ptr": pt if narrow else "constexpr", "DY_ptr": xt,
           "DS_ptr": "*fp32" if residual else "constexpr", "X_ptr": xt,
           "W_ptr": "*fp32" if residual else pt,
           "RSTD_ptr": "*fp32", "DWP_ptr": "*fp32", "stride_x_row": "i32",
           "stride_dy_row": "i32", "stride_dx_row": "i32", "stride_dwp_row": "i32",
           "M": "i32", "N": "i32", "rows_per_program": "i32", "eps": "fp32",
           "BLOCK_N": "constexpr", "ONE_COL": "constexpr", "HAS_DS": "constexpr",
           "HAS_DB": "constexpr", "SPLIT": "constexpr"}  # fmt: skip
    consts = {"BLOCK_N": block, "ONE_COL": False, "HAS_DS": residual, "HAS_DB": narrow,
              "SPLIT": split}  # fmt: skip
    if not residual:
        consts.update(DS_ptr=None)
    if not narrow:
        consts.update(DB_ptr=None)
    div = ["DX_ptr", "DY_ptr", "X_ptr", "W_ptr", "RSTD_ptr", "DWP_ptr", "stride_x_row",
           "stride_dy_row", "stride_dx_row", "stride_dwp_row", "N"]  # fmt: skip
    div += (["DS_ptr"] if residual else []) + (["DB_ptr"] if narrow else [])
    # the fused kernel runs at the fp32 stream's width: its warps are fp32's
    warps = num_warps_bwd(block, 4 if residual else e)
    note = "one resident wave walking rows; fp32 dw partial row per program"
    note += ("; + ds" if residual else "") + ("; writes the branch grad" if narrow else "")
    if split > 1:
        note += f"; {split} programs per row, a {block}-column slice each (row sum from L2)"
    return {
        "kernel": "add_rmsnorm_bwd_dx" if residual else "rmsnorm_bwd_dx",
        "fn": _rmsnorm_bwd_dx_kernel,
        "signature": sig,
        "constexprs": consts,
        "num_warps": warps,
        "divisible": div,
        "dtype": dtype,
        "hidden": hidden,
        "elems_per_iter": min(hidden, block),
        "inner_repeat": split,
        "bytes_per_elem": (16 + e if narrow else 16) if residual else 3 * e,
        "note": note,
    }


def aot_specs(dtypes: tuple[str, ...] = ("bf16", "fp32")) -> list[dict]:
    """Compile specs for `kernels.aot`: fwd and bwd kernels (plain and with the fused residual), per
    dtype, hidden 768/4096/16384, and 32768, whose rows neighbouring programs share.

    Row strides and N are declared divisible by 16 (true for the model's hidden sizes): that is what
    lets the compiler prove 16-byte alignment and emit 128-bit loads.
    """
    specs: list[dict] = []
    for dtype in dtypes:
        pt = f"*{dtype}"
        for hidden in (768, 4096, 16384, 32768):
            for residual in (False, True):
                specs.append(_fwd_spec(dtype, hidden, residual))
                specs.append(_dx_spec(dtype, hidden, residual))
            block_c = dw_block_c(hidden, 132)
            specs.append({
                "kernel": "rmsnorm_bwd_dw", "fn": _rmsnorm_bwd_dw_kernel,
                "signature": {"DW_ptr": pt, "DWP_ptr": "*fp32", "stride_dwp_row": "i32",
                              "P": "i32", "N": "i32", "BLOCK_P": "constexpr",
                              "BLOCK_C": "constexpr"},
                "constexprs": {"BLOCK_P": _DW_TILE // block_c, "BLOCK_C": block_c},
                "num_warps": 4, "divisible": ["DW_ptr", "DWP_ptr", "stride_dwp_row", "N"],
                "dtype": dtype, "hidden": hidden, "elems_per_iter": _DW_TILE,
                "bytes_per_elem": 4,
                "note": f"deterministic column reduce, {block_c} columns per program, no atomics",
            })  # fmt: skip
    return specs
