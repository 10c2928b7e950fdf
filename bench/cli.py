"""`bench` command line: sweep, merge, show, plot, kernels.

    bench sweep --minutes 0.1 --n-layer 1,2 --n-embd 32,64 --n-head 2 --out results/sweep
    bench sweep --minutes 1 --grid grid.json --out DIR --shard 0/4 --gpus 0,1,2,3
    bench merge DIR1 DIR2 --out DIR
    bench show DIR --sort step_ms_median --filter 'status == "ok"'
    bench plot DIR
    bench kernels --op all --dtype bf16 --out results/kernels

Bad input prints one `error: ...` line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import grid as gridmod

# Grid flags = ModelConfig fields and settings, kebab-case like `train`'s flags.
GRID_FLAGS = [k for k in gridmod.known_keys() if k != gridmod.INJECT_KEY]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line + exit 2, argparse's usage dump is noise here
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _build() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    s = sub.add_parser("sweep", help="wall-clock sweep, one subprocess per config")
    s.add_argument("--minutes", type=float, required=True, help="timed budget per config")
    s.add_argument("--out", required=True)
    s.add_argument("--preset", default=None, help="base config (ModelConfig defaults otherwise)")
    s.add_argument("--grid", default=None, help="JSON list or CSV of rows instead of flag lists")
    for k in GRID_FLAGS:
        s.add_argument("--" + k.replace("_", "-"), dest="g_" + k, default=None, help="comma list")
    s.add_argument(
        "--timeout-factor",
        type=float,
        default=3.0,
        help="per-config timeout = factor * budget + --timeout-grace",
    )
    s.add_argument("--timeout-grace", type=float, default=120.0, help="seconds")
    s.add_argument("--shard", default=None, help="i/n: run only this deterministic share")
    s.add_argument("--gpus", default=None, help="comma list of GPU ids, one config per GPU")
    s.add_argument("--warmup-steps", type=int, default=2)
    s.add_argument("--data", default=None, help="token file (default: embedded corpus)")
    s.add_argument(
        "--threads", type=int, default=None, help="torch threads per worker (default 1 on CPU)"
    )
    s.add_argument("--no-progress", action="store_true")
    m = sub.add_parser("merge", help="join shard result dirs, deduplicated by config_id")
    m.add_argument("dirs", nargs="+")
    m.add_argument("--out", required=True)
    sh = sub.add_parser("show", help="print the results table")
    sh.add_argument("dir")
    sh.add_argument("--sort", default=None)
    sh.add_argument("--filter", default=None, help="pandas query expression")
    sh.add_argument("--columns", default=None, help="comma list")
    pl = sub.add_parser("plot", help="write PNGs into DIR")
    pl.add_argument("dir")
    pl.add_argument("--out", default=None, help="PNG directory (default DIR)")
    k = sub.add_parser("kernels", help="kernel micro-benchmarks (GPU; AOT report otherwise)")
    k.add_argument("--op", default="all", choices=["rmsnorm", "swiglu", "adamw", "all"])
    k.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    k.add_argument("--shapes", default=None, help="comma list: MxN (rmsnorm/swiglu) or N (adamw)")
    k.add_argument("--out", default=None, help="directory for kernels.csv and kernels.png")
    k.add_argument("--arch", default="sm_90", help="AOT report target without a GPU")
    return p


def _sweep(a) -> int:
    from .sweep import SweepOptions, plan, run_sweep

    if not a.minutes > 0:
        raise gridmod.GridError(f"--minutes must be > 0, got {a.minutes}")
    lists = {
        k: getattr(a, "g_" + k).split(",") for k in GRID_FLAGS if getattr(a, "g_" + k) is not None
    }
    if a.grid:
        if lists:
            raise gridmod.GridError("use either --grid FILE or grid flags, not both")
        rows = gridmod.read_grid_file(a.grid, a.preset)
    else:
        rows = gridmod.expand(lists, a.preset)
    if not rows:
        raise gridmod.GridError("the grid is empty")
    shard = gridmod.parse_shard(a.shard) if a.shard else None
    gpus = [g.strip() for g in a.gpus.split(",") if g.strip()] if a.gpus else []
    opts = SweepOptions(
        out_dir=a.out,
        minutes=a.minutes,
        timeout_factor=a.timeout_factor,
        timeout_grace_s=a.timeout_grace,
        shard=shard,
        gpus=gpus,
        warmup_steps=a.warmup_steps,
        data=a.data,
        threads=a.threads,
        progress=not a.no_progress,
    )
    runnable, skipped = plan(rows, opts)
    if not runnable and not skipped:
        raise gridmod.GridError("the grid is empty" + (" in this shard" if shard else ""))
    if not runnable:
        raise gridmod.GridError(f"every config is invalid, e.g. {skipped[0][2]}")
    if any(r["device"] == "cuda" for r, _ in runnable):
        import torch

        if not torch.cuda.is_available():
            raise gridmod.GridError("--device cuda requested but no GPU is available")
    from .envinfo import env_info

    env = env_info("cuda" if any(r["device"] == "cuda" for r, _ in runnable) else "cpu")
    rows_out = run_sweep(rows, opts, env)
    import pandas as pd

    from .show import format_table

    print(format_table(pd.DataFrame(rows_out)))
    return 0


def _kernels(a) -> int:
    import torch

    from . import kernels as kb

    ops = list(kb.OPS) if a.op == "all" else [a.op]
    shapes = {op: list(kb.DEFAULT_SHAPES[op]) for op in ops}
    if a.shapes:
        if len(ops) != 1:
            raise ValueError("--shapes needs a single --op")
        shapes[ops[0]] = [s.strip() for s in a.shapes.split(",") if s.strip()]
    for op in ops:
        for s in shapes[op]:
            kb.parse_shape(op, s)
    if not torch.cuda.is_available():
        print(
            "no GPU here: kernel timings need CUDA; printing the AOT compile report instead",
            file=sys.stderr,
        )
        try:
            from kernels import aot
        except ImportError as e:
            print(f"error: the AOT report is unavailable ({e})", file=sys.stderr)
            return 1
        # Narrow the report to the requested op when its kernels are named after it.
        only = {"rmsnorm": "rms", "swiglu": "swiglu", "adamw": "adam"}.get(a.op)
        try:
            rows = aot.report(a.arch, only) if only else []
            if not rows:
                rows = aot.report(a.arch)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            print(f"error: the AOT report failed: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        print(aot.format_table(rows))
        return 0
    from .envinfo import env_info

    env = env_info("cuda")
    env = {k: env[k] for k in ("gpu_name", "torch", "triton", "cuda", "git_sha")}
    rows = kb.run_kernels(ops, a.dtype, shapes, env, log=lambda m: print(m, file=sys.stderr))
    if a.out:
        import pandas as pd

        os.makedirs(a.out, exist_ok=True)
        csv_path = os.path.join(a.out, "kernels.csv")
        pd.DataFrame(rows, columns=list(kb.COLUMNS)).to_csv(csv_path + ".tmp", index=False)
        os.replace(csv_path + ".tmp", csv_path)
        kb.plot_kernels(rows, os.path.join(a.out, "kernels.png"))
        print(f"wrote {csv_path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        a = _build().parse_args(argv)
    except SystemExit as e:  # _Parser.error already printed one line; --help exits 0
        return int(e.code or 0)
    try:
        if a.cmd == "sweep":
            return _sweep(a)
        if a.cmd == "merge":
            from . import results

            rows = results.merge(a.dirs)
            results.write_rows(a.out, rows)
            print(f"merged {len(rows)} rows into {a.out}", file=sys.stderr)
            return 0
        if a.cmd == "show":
            from .show import format_table, load_frame

            cols = [c.strip() for c in a.columns.split(",")] if a.columns else None
            print(format_table(load_frame(a.dir), a.sort, a.filter, cols))
            return 0
        if a.cmd == "plot":
            from .plot import plot_dir

            for path in plot_dir(a.dir, a.out):
                print(path)
            return 0
        return _kernels(a)
    except (gridmod.GridError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
