"""`bench kernels`: micro-benchmarks of RMSNorm, SwiGLU, linear + cross-entropy and
AdamW(+averaging) against baselines.

Providers: ours (`kernels`), the pure-torch reference eager and under `torch.compile`, Liger and
apex when importable, and for AdamW `torch.optim.AdamW(fused=True)` + a separate SWA pass.
Two times per row (GPU only; untimed warmup, the L2 flushed before every rep by writing a 256 MB
buffer):

* GPU time (``gpu_ms``): the durations of the CUDA kernels one call launches, as the profiler
  (CUPTI) records them, summed and averaged over the reps, with the flush's own kernels taken
  out: what the call costs the GPU when the host keeps up, with host gaps excluded. Bandwidth
  (``gbps`` = bytes_moved() / GPU time, ``pct_copy_bw`` against the device copy bandwidth measured
  in the same run with a large ``dst.copy_(src)``) comes from it;
* call time (``call_ms`` = ``p50_ms``, with ``p20_ms``/``p80_ms``): CUDA events around one call
  started on an idle GPU, so the host's launch work is included: what an eager training step pays.

``peak_mem_mb``: the memory one call allocates above what was allocated before it. Without a GPU
the command says so and prints the AOT compile report (`kernels.aot`) for the asked op and dtype
instead, and writes it into --out (aot_report.md, aot_report.json).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

# add_rmsnorm last: a GPU report stopped by its time cap loses it before the targets' rows
OPS = ("rmsnorm", "swiglu", "linear_ce", "adamw", "add_rmsnorm")
MODES = ("forward", "backward", "full")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DEFAULT_SHAPES = {
    "rmsnorm": ["4096x4096", "16384x1024", "1151x8192"],
    # the 124M step's (32 x 512 rows of 768), and a 16k-wide row two programs share (the backward)
    "add_rmsnorm": ["16384x768", "4096x16384"],
    "swiglu": ["4096x11008", "16384x2816", "1151x8192"],
    "linear_ce": ["16384x768x50304"],  # tokens x hidden x vocabulary: the 124M LM head
    "adamw": ["1000000", "16777216", "124000000"],
}
# `kernels.aot` names the kernels, not the ops: the --op whose kernels a name filter selects
AOT_NAMES = {"linear_ce": "cross_entropy"}
COLUMNS = (
    "op", "provider", "mode", "dtype", "shape", "numel", "gpu_ms", "call_ms", "p20_ms", "p50_ms",
    "p80_ms", "bytes", "gbps", "pct_copy_bw", "copy_gbps", "peak_mem_mb", "max_abs_err", "status",
    "message", "gpu_name", "torch", "triton", "cuda", "git_sha", "timestamp",
)  # fmt: skip


def parse_shape(op: str, text: str) -> tuple[int, ...]:
    """'MxN' for rmsnorm/add_rmsnorm/swiglu (rows x hidden), 'NxDxV' for linear_ce (tokens x
    hidden x vocabulary), 'N' (number of parameters) for adamw."""
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"bad shape {text!r} for {op}") from None
    want = {"adamw": 1, "linear_ce": 3}.get(op, 2)
    if len(dims) != want or any(d <= 0 for d in dims):
        form = {1: "N", 2: "MxN", 3: "NxDxV"}[want]
        raise ValueError(f"bad shape {text!r} for {op}: expected {form}")
    return dims


def bytes_moved(
    op: str, mode: str, shape: tuple[int, ...], dtype_bytes: int, average: bool = False
) -> int:
    """Minimal HBM bytes an ideal fused kernel moves (each tensor read/written once).

    rmsnorm (x: M x N, weight N; rstd kept in fp32, M floats):
      forward  = read x + read w + write y               = 2MN*e + N*e
      backward = read dy, x, w, rstd + write dx, dw       = 3MN*e + 2N*e + 4M
    add_rmsnorm (the branch x in e bytes, the stream r, its sum s, y, weight and grads in fp32):
      forward  = read x, r, w + write s, y, rstd          = MN*(e + 12) + 4N + 4M
      backward = read dy, ds, s, w, rstd + write dr, dx, dw = MN*(16 + e) + 8N + 4M
                 (dx in the branch dtype; with an fp32 branch dx is dr: MN*16)
    swiglu (gate, up, out: M x N):
      forward  = read gate, up + write out                = 3MN*e
      backward = read dout, gate, up + write dgate, dup   = 5MN*e
    full = forward + backward. adamw (N params, fp32 param/grad/m/v, mode 'full' only):
      read p, g, m, v + write p, m, v = 28N; averaging adds read + write of the average = 8N.
    linear_ce (h: N x D, W: V x D, int64 targets; mode 'full' only): read h, W, targets + write
      dh, dW = 2ND*e + 2VD*e + 8N. It is matmul-bound (6NDV FLOPs): compare its times, not its
      bandwidth.
    """
    if op == "adamw":
        (n,) = shape
        return 28 * n + (8 * n if average else 0)
    if op == "linear_ce":
        n, d, v = shape
        return 2 * n * d * dtype_bytes + 2 * v * d * dtype_bytes + 8 * n
    m, n = shape
    e = dtype_bytes
    if op == "rmsnorm":
        fwd, bwd = 2 * m * n * e + n * e, 3 * m * n * e + 2 * n * e + 4 * m
    elif op == "add_rmsnorm":
        narrow = e if e < 4 else 0  # a 16-bit branch gets its own grad; an fp32 one shares dr
        fwd, bwd = m * n * (e + 12) + 4 * n + 4 * m, m * n * (16 + narrow) + 8 * n + 4 * m
    elif op == "swiglu":
        fwd, bwd = 3 * m * n * e, 5 * m * n * e
    else:
        raise ValueError(f"unknown op {op!r}")
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def providers(op: str) -> list[str]:
    """Providers that can run `op` here (third-party ones only when importable)."""
    out = ["ours", "torch", "torch_compile"]
    if op == "adamw":
        out = ["ours", "torch_fused"]
        if _has("apex"):
            out.append("apex")
        return out
    if _has("liger_kernel"):
        out.append("liger")
    if op == "rmsnorm" and _has("apex"):
        out.append("apex")
    if op == "add_rmsnorm":  # neither Liger nor apex fuses the residual add into the norm
        out = [p for p in out if p not in ("liger", "apex")]
    return out


def _ce_fn(provider: str):
    """mean CE of (h @ w.T) against t: ours chunked, torch materialising the logits, Liger's."""
    import torch
    import torch.nn.functional as F

    def ref(h, w, t):
        return F.cross_entropy(torch.mm(h, w.t()).float(), t)

    if provider == "ours":
        from kernels.cross_entropy import linear_cross_entropy

        return linear_cross_entropy
    if provider == "torch":
        return ref
    if provider == "torch_compile":
        return torch.compile(ref)
    if provider == "liger":
        # the loss module's forward(lin_weight, input, target) is the same across Liger versions
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )

        loss = LigerFusedLinearCrossEntropyLoss()

        def liger(h, w, t):
            out = loss(w, h, t)
            return out[0] if isinstance(out, tuple) else out  # (loss, z_loss) in some versions

        return liger
    raise ValueError(f"unknown provider {provider!r}")


def _fn(op: str, provider: str):
    """A callable for the elementwise ops: rmsnorm(x, w) or swiglu(gate, up)."""
    import torch

    from kernels import reference

    ref = {
        "rmsnorm": lambda x, w: reference.rms_norm_ref(x, w, 1e-6),
        "add_rmsnorm": lambda x, r, w: reference.add_rms_norm_ref(x, r, w, 1e-6),
        "swiglu": reference.swiglu_ref,
    }[op]
    if provider == "torch":
        return ref
    if provider == "torch_compile":
        return torch.compile(ref)
    if provider == "ours":
        import kernels

        return {
            "rmsnorm": lambda x, w: kernels.rms_norm(x, w, 1e-6),
            "add_rmsnorm": lambda x, r, w: kernels.add_rms_norm(x, r, w, 1e-6),
            "swiglu": kernels.swiglu,
        }[op]
    if provider == "liger":
        if op == "rmsnorm":
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction

            return lambda x, w: LigerRMSNormFunction.apply(x, w, 1e-6)
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        return LigerSiLUMulFunction.apply
    if provider == "apex":
        from apex.normalization.fused_layer_norm import fused_rms_norm_affine

        return lambda x, w: fused_rms_norm_affine(x, w, w.shape, 1e-6)
    raise ValueError(f"unknown provider {provider!r}")


def _flush_buffer():
    import torch

    return torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")


def time_cuda(fn, reps: int = 50, warmup: int = 10) -> tuple[float, float, float]:
    """Call time: p20/p50/p80 ms of one fn() between CUDA events, each started on an idle GPU (the
    L2 flushed by a 256 MB write, then synchronised), so the host's work is part of it."""
    import torch

    flush = _flush_buffer()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ms.append(a.elapsed_time(b))
    from core import percentile

    return percentile(ms, 0.2), percentile(ms, 0.5), percentile(ms, 0.8)


def _profiler_activities() -> list:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CUDA]


def _kernel_ms(fn, reps: int) -> float:
    """Summed duration (ms) of the device kernels of `reps` calls of fn, from the profiler."""
    import torch
    from torch.profiler import profile

    torch.cuda.synchronize()
    with profile(activities=_profiler_activities()) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    # self device time: each kernel counted once, under the op that launched it
    us = sum(
        getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
        for e in prof.key_averages()
    )
    return us / 1e3


def gpu_time_ms(fn, reps: int = 10) -> float:
    """GPU time of one fn() (ms): its kernels' durations, averaged over `reps` calls each after an
    L2 flush, minus the flushes' own (profiled alone): host gaps between launches excluded."""
    flush = _flush_buffer()
    fn()  # warm (compiled, autotuned) already; one more call keeps the profile steady
    both = _kernel_ms(lambda: (flush.zero_(), fn()), reps)
    alone = _kernel_ms(flush.zero_, reps)
    return max(0.0, (both - alone) / reps)


def peak_mem_mb(fn) -> float:
    """Memory one fn() allocates above what is allocated before it (MB)."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbps() -> float:
    """Device copy bandwidth: 1 GiB dst.copy_(src) reads + writes 2 GiB."""
    import torch

    n = 2**30
    src = torch.empty(n, dtype=torch.int8, device="cuda")
    dst = torch.empty_like(src)
    _, p50, _ = time_cuda(lambda: dst.copy_(src), reps=20, warmup=3)
    return 2 * n / (p50 * 1e-3) / 1e9


def _times(fn, reps: int = 50, warmup: int = 10) -> dict:
    """The timing columns of one callable: call-time quantiles, GPU time, peak memory."""
    p20, p50, p80 = time_cuda(fn, reps=reps, warmup=warmup)
    return dict(p20_ms=p20, p50_ms=p50, p80_ms=p80, call_ms=p50, gpu_ms=gpu_time_ms(fn),
                peak_mem_mb=peak_mem_mb(fn))  # fmt: skip


def _no_donated_buffers():
    """torch.compile's AOT autograd donates the saved activations to the compiled backward, which
    may then free or reuse them: a backward graph so compiled can run once. The "backward" mode
    replays one backward graph (retain_graph) to time the backward alone, which donation forbids
    ("compiled with non-empty donated buffers"), so these benchmarks compile without it. Donation
    saves memory, not kernel time; rebuilding the graph per call instead would time the forward
    too."""
    import torch._functorch.config as fconfig

    return fconfig.patch(donated_buffer=False)


def _bench_elementwise(op, provider, mode, shape, dtype) -> tuple[dict, float]:
    import torch

    m, n = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    if op == "rmsnorm":
        inputs = [
            torch.randn(m, n, device="cuda", dtype=dtype, generator=g),
            1 + 0.1 * torch.randn(n, device="cuda", dtype=dtype, generator=g),
        ]
    elif op == "add_rmsnorm":  # the training step's: a `dtype` branch onto the fp32 stream
        inputs = [
            torch.randn(m, n, device="cuda", dtype=dtype, generator=g),
            torch.randn(m, n, device="cuda", dtype=torch.float32, generator=g),
            1 + 0.1 * torch.randn(n, device="cuda", dtype=torch.float32, generator=g),
        ]
    else:
        inputs = [torch.randn(m, n, device="cuda", dtype=dtype, generator=g) for _ in range(2)]
    leaves = [t.requires_grad_(mode != "forward") for t in inputs]

    def outs(fn):  # every output as a tuple: add_rmsnorm returns (y, s)
        got = fn(*leaves)
        return got if isinstance(got, tuple) else (got,)

    with _no_donated_buffers():
        fn = _fn(op, provider)
        ref = _fn(op, "torch")
        out_ref = ref(*[t.detach().float() for t in leaves])
        out_ref = out_ref if isinstance(out_ref, tuple) else (out_ref,)
        out = outs(fn)
        err = max((o.float() - r).abs().max().item() for o, r in zip(out, out_ref))
        dys = [torch.randn_like(o) for o in out]
        if mode == "forward":
            with torch.no_grad():
                t = _times(lambda: fn(*leaves))
        elif mode == "backward":
            t = _times(lambda: torch.autograd.grad(out, leaves, dys, retain_graph=True))
        else:
            t = _times(lambda: torch.autograd.grad(outs(fn), leaves, dys))
    return t, err


def _bench_ce(provider, shape, dtype) -> tuple[dict, float]:
    """Forward + backward of the loss (mode 'full'): h (N, D) and W (V, D) in `dtype`."""
    import torch
    import torch.nn.functional as F

    n, d, v = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(n, d, device="cuda", dtype=dtype, generator=g).requires_grad_(True)
    w = (0.02 * torch.randn(v, d, device="cuda", dtype=dtype, generator=g)).requires_grad_(True)
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    with _no_donated_buffers():
        fn = _ce_fn(provider)
        with torch.no_grad():
            want = F.cross_entropy(torch.mm(h.float(), w.float().t()), t).item()
        err = abs(fn(h, w, t).item() - want)
        return _times(lambda: torch.autograd.grad(fn(h, w, t), (h, w)), reps=20, warmup=3), err


def _bench_adamw(provider, shape, average: bool) -> tuple[dict, float]:
    import torch

    (n,) = shape
    p = torch.randn(n, device="cuda")
    param = torch.nn.Parameter(p.clone())
    param.grad = torch.randn(n, device="cuda") * 1e-2
    avg = p.clone()
    if provider == "ours":
        from kernels import FusedAdamW

        # swa_interval=1: every timed step moves the window mean, in the same pass as the update
        opt = FusedAdamW([param], lr=1e-3, swa=average, swa_interval=1, swa_horizon=None)
        return _times(opt.step, reps=20, warmup=5), math.nan
    if provider == "torch_fused":
        opt = torch.optim.AdamW([param], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    elif provider == "apex":
        from apex.optimizers import FusedAdam

        opt = FusedAdam([param], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, adam_w_mode=True)
    else:
        raise ValueError(f"unknown provider {provider!r}")

    def step():
        opt.step()
        if average:  # the separate averaging pass other optimizers make you pay for
            torch._foreach_lerp_([avg], [param.data], 0.5)

    # No error column for AdamW: its numerics are covered by the kernel tests against adamw_ref.
    return _times(step, reps=20, warmup=5), math.nan


def _cases(ops: list[str], shapes: dict[str, list[str]]):
    """(op, shape text, provider, mode, average) of every row to measure."""
    for op in ops:
        for shape_text in shapes[op]:
            for provider in providers(op):
                for mode in ("full",) if op in ("adamw", "linear_ce") else MODES:
                    for average in (False, True) if op == "adamw" else (False,):
                        yield op, shape_text, provider, mode, average


def _measure(op, shape, provider, mode, average, tdtype, nbytes: int, copy: float) -> dict:
    """Timing columns of one row; a failure becomes status 'oom'/'error' with a message."""
    nan = math.nan
    try:
        if op == "adamw":
            t, err = _bench_adamw(provider, shape, average)
        elif op == "linear_ce":
            t, err = _bench_ce(provider, shape, tdtype)
        else:
            t, err = _bench_elementwise(op, provider, mode, shape, tdtype)
    except Exception as e:  # noqa: BLE001  (one provider must not stop the run)
        status = "oom" if "out of memory" in str(e) else "error"
        message = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return dict(p20_ms=nan, p50_ms=nan, p80_ms=nan, gpu_ms=nan, call_ms=nan, bytes=nbytes,
                    gbps=nan, pct_copy_bw=nan, peak_mem_mb=nan, max_abs_err=nan, status=status,
                    message=message)  # fmt: skip
    # bandwidth from the GPU time (the kernels' own), falling back to the call time if the
    # profiler saw no kernel (then the row says so)
    base = t["gpu_ms"] if t["gpu_ms"] > 0 else t["p50_ms"]
    gbps = nbytes / (base * 1e-3) / 1e9
    msg = "" if t["gpu_ms"] > 0 else "profiler saw no kernels: bandwidth from the call time"
    return dict(**t, bytes=nbytes, gbps=gbps, pct_copy_bw=100 * gbps / copy, max_abs_err=err,
                status="ok", message=msg)  # fmt: skip


def run_kernels(
    ops: list[str], dtype: str, shapes: dict[str, list[str]], env: dict, log=print, on_row=None
) -> list[dict]:
    """All rows (GPU only). Failures of one provider become a row with status 'error'.
    `on_row(rows)`: called with the rows so far after each one."""
    import time

    import torch

    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    copy = copy_bandwidth_gbps()
    log(f"device copy bandwidth: {copy:.0f} GB/s")
    rows = []
    for op, shape_text, provider, mode, average in _cases(ops, shapes):
        shape = parse_shape(op, shape_text)
        row_dtype = "fp32" if op == "adamw" else dtype
        nbytes = bytes_moved(op, mode, shape, DTYPE_BYTES[row_dtype], average)
        row = {
            "op": op + ("+swa" if average else ""),
            "provider": provider,
            "mode": mode,
            "dtype": row_dtype,
            "shape": shape_text,
            "numel": math.prod(shape),
            "copy_gbps": copy,
            **env,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        row.update(_measure(op, shape, provider, mode, average, tdtype, nbytes, copy))
        rows.append({c: row.get(c) for c in COLUMNS})
        if on_row is not None:
            on_row(rows)
        log(
            f"{op:11s} {provider:14s} {mode:8s} {shape_text:>15s} gpu {row['gpu_ms']:.4f} ms "
            f"call {row['call_ms']:.4f} ms {row['gbps']:.0f} GB/s {row['status']}"
        )
    return rows


def plot_kernels(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    labels = [f"{r['op']}/{r['mode']}/{r['shape']}/{r['provider']}" for r in ok]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(ok))))
    ax.barh(range(len(ok)), [r["pct_copy_bw"] for r in ok])
    ax.set_yticks(range(len(ok)), labels, fontsize=6)
    ax.set_xlabel("% of device copy bandwidth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_parser(sub) -> None:
    """The `bench kernels` subcommand (bench/cli.py calls this when it builds its parser)."""
    k = sub.add_parser(
        "kernels",
        help="kernel micro-benchmarks (GPU; the AOT compile report otherwise)",
        description=__doc__.splitlines()[0],
    )
    k.add_argument("--op", default="all", choices=[*OPS, "all"], help="kernel(s) to time")
    k.add_argument(
        "--dtype", default="bf16", choices=list(DTYPE_BYTES), help="RMSNorm/SwiGLU data type"
    )
    k.add_argument(
        "--shapes",
        default=None,
        metavar="LIST",
        help="comma list: MxN (rmsnorm, add_rmsnorm, swiglu), NxDxV (linear_ce) or N (adamw)",
    )
    k.add_argument(
        "--out", default=None, metavar="DIR", help="folder for the results (created if missing)"
    )
    k.add_argument(
        "--arch", default="sm_90", choices=["sm_90", "sm_80"], help="AOT target without a GPU"
    )
    k.set_defaults(func=command)


def command(a) -> int:
    """`bench kernels`: time on a GPU; without one, the static report for --op and --dtype."""
    import torch

    from core import UserError

    ops = list(OPS) if a.op == "all" else [a.op]
    shapes = {op: list(DEFAULT_SHAPES[op]) for op in ops}
    if a.shapes:
        if len(ops) != 1:
            raise UserError("--shapes needs a single --op")
        shapes[ops[0]] = [s.strip() for s in a.shapes.split(",") if s.strip()]
    for op in ops:
        for s in shapes[op]:
            try:
                parse_shape(op, s)
            except ValueError as e:
                raise UserError(str(e)) from None
    if not torch.cuda.is_available():
        return _static(a)
    from bench.envinfo import env_info

    env = env_info("cuda")
    env = {k: env.get(k) for k in ("gpu_name", "torch", "triton", "cuda", "git_sha")}
    rows = run_kernels(
        ops, a.dtype, shapes, env, log=lambda m: print(m, file=sys.stderr),
        on_row=(lambda done: _write_csv(a.out, done)) if a.out else None,
    )  # fmt: skip
    if a.out:
        plot_kernels(rows, os.path.join(a.out, "kernels.png"))
        print(f"wrote {os.path.join(a.out, 'kernels.csv')}", file=sys.stderr)
    return 0


def _write_csv(out: str, rows: list[dict]) -> None:
    """kernels.csv with the rows so far, replaced atomically: a run stopped by a time cap (the GPU
    report's) keeps every row it measured."""
    import io

    import pandas as pd

    from core import atomic_write

    buf = io.StringIO()
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(buf, index=False)
    atomic_write(os.path.join(out, "kernels.csv"), buf.getvalue())


def _static(a) -> int:
    """No GPU: print (and with --out write) the AOT compile report of --op at --dtype."""
    from bench.gpu_report import static_markdown
    from core import atomic_write
    from kernels import aot

    print("no GPU here: kernel timings need CUDA; the AOT compile report instead", file=sys.stderr)
    only = None if a.op == "all" else AOT_NAMES.get(a.op, a.op)
    try:
        rows = aot.report(a.arch, only, (a.dtype,))
    except (ImportError, RuntimeError, OSError) as e:
        print(f"error: the AOT report failed: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(aot.format_report(rows))
    if a.out:
        text = static_markdown(rows, "no CUDA device: timings need a GPU")
        atomic_write(os.path.join(a.out, "aot_report.md"), text)
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(os.path.join(a.out, "aot_report.json"), lines)
        print(f"wrote {os.path.join(a.out, 'aot_report.md')}", file=sys.stderr)
    return 0
