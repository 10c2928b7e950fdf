"""`bench kernels`: kernel micro-benchmarks on a GPU, the AOT compile report without one."""

from __future__ import annotations

import os
import subprocess
import sys

from model.config import UserError, atomic_write


def kernels_cmd(a) -> int:
    import torch

    from . import kernels as kb

    ops = list(kb.OPS) if a.op == "all" else [a.op]
    shapes = {op: list(kb.DEFAULT_SHAPES[op]) for op in ops}
    if a.shapes:
        if len(ops) != 1:
            raise UserError("--shapes needs a single --op")
        shapes[ops[0]] = [s.strip() for s in a.shapes.split(",") if s.strip()]
    for op in ops:
        for s in shapes[op]:
            try:
                kb.parse_shape(op, s)
            except ValueError as e:
                raise UserError(str(e).splitlines()[0]) from None
    if not torch.cuda.is_available():
        return _aot_report(a)
    from .envinfo import env_info

    env = env_info("cuda")
    env = {k: env[k] for k in ("gpu_name", "torch", "triton", "cuda", "git_sha")}
    rows = kb.run_kernels(ops, a.dtype, shapes, env, log=lambda m: print(m, file=sys.stderr))
    if a.out:
        import io

        import pandas as pd

        csv_path = os.path.join(a.out, "kernels.csv")
        buf = io.StringIO()
        pd.DataFrame(rows, columns=list(kb.COLUMNS)).to_csv(buf, index=False)
        atomic_write(csv_path, buf.getvalue())
        kb.plot_kernels(rows, os.path.join(a.out, "kernels.png"))
        print(f"wrote {csv_path}", file=sys.stderr)
    return 0


def _aot_report(a) -> int:
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
