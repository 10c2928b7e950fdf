"""`python -m bench.gpu_report`: measure what the GPU targets ask for, write gpu-report/REPORT.md.

On a CUDA machine it runs, each step logged under OUT/logs and none stopping the others:

1. the CUDA test set: ``pytest tests/kernels`` with STEPTIME_TEST_DEVICE=cuda (compiled Triton
   kernels on CUDA tensors, bf16 included; FusedAdamW vs torch.optim.AdamW; a short training run
   with triton vs torch kernels);
2. ``bench kernels --op all --dtype bf16`` (ours against torch eager, torch.compile, Liger, apex);
3. the 124M preset's throughput (tokens/s, MFU) with and without ``--compile``;
4. a 2-minute ``bench sweep`` of 6 configs;

then writes REPORT.md with the environment, each kernel's TB/s and % of the measured copy
bandwidth beside its target, the trainer's MFU, the sweep, and PNGs. Without CUDA it says so and
writes the static report (the sm_90 compile table with its issue-bound ceilings) instead, exit 0.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from core import ArgParser, UserError, atomic_write, percentile, run_cli

# (name, op, mode, shape, unit, goal, higher_is_better): the kernel targets at bf16.
KERNEL_TARGETS = (
    ("RMSNorm fwd", "rmsnorm", "forward", "4096x4096", "TB/s", 2.9, True),
    ("RMSNorm bwd", "rmsnorm", "backward", "4096x4096", "us", 45.0, False),
    ("SwiGLU fwd", "swiglu", "forward", "4096x11008", "TB/s", 2.9, True),
    ("SwiGLU bwd", "swiglu", "backward", "4096x11008", "TB/s", 2.5, True),
    ("FusedAdamW+SWA", "adamw+swa", "full", "124000000", "TB/s", 2.5, True),
)
SPEEDUP_GOAL = 1.3  # FusedAdamW+SWA vs torch fused AdamW + a separate averaging pass
MFU_GOAL = 0.45  # trainer, 124M preset, with --compile
ROOT = Path(__file__).resolve().parents[1]  # the repository: tests/ and the packages live here
SWEEP = ["--n-layer", "4,8,12", "--n-embd", "512,768", "--n-head", "8", "--preset", "124M"]


def md_table(rows: list[dict], cols: list[str]) -> str:
    """A markdown table; floats get 4 significant digits, missing values are blank."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _ours(rows: list[dict], op: str, mode: str, shape: str, provider: str = "ours") -> dict | None:
    for r in rows:
        ok = r.get("status") == "ok"
        if ok and (r["op"], r["mode"], str(r["shape"]), r["provider"]) == (
            op,
            mode,
            shape,
            provider,
        ):
            return r
    return None


def kernel_targets(rows: list[dict]) -> list[dict]:
    """Each kernel target with its measurement from `bench kernels` rows (pass None: not run)."""
    out = []
    for name, op, mode, shape, unit, goal, higher in KERNEL_TARGETS:
        r = _ours(rows, op, mode, shape)
        val = None if r is None else (r["gbps"] / 1e3 if unit == "TB/s" else r["p50_ms"] * 1e3)
        ok = None if val is None else (val >= goal if higher else val <= goal)
        pct = None if r is None else r.get("pct_copy_bw")
        out.append({"target": f"{name} {shape} bf16", "measured": val, "unit": unit,
                    "goal": f"{'>=' if higher else '<='} {goal}", "pct_copy_bw": pct,
                    "pass": ok})  # fmt: skip
    ours, ref = _ours(rows, "adamw+swa", "full", "124000000"), None
    ref = _ours(rows, "adamw+swa", "full", "124000000", "torch_fused")
    speed = None if ours is None or ref is None else ref["p50_ms"] / ours["p50_ms"]
    out.append({"target": "FusedAdamW+SWA vs torch fused AdamW + SWA pass", "measured": speed,
                "unit": "x", "goal": f">= {SPEEDUP_GOAL}", "pct_copy_bw": None,
                "pass": None if speed is None else speed >= SPEEDUP_GOAL})  # fmt: skip
    return out


def throughput_summary(records: list[dict], skip: int = 2) -> dict:
    """Median tokens/s and MFU of a run's train records, the first ``skip`` (compile) left out."""
    recs = [r for r in records if r.get("kind") == "train" and r.get("tokens_per_s")]
    recs = recs[skip:] if len(recs) > skip else recs
    mfus = [r["mfu"] for r in recs if r.get("mfu") is not None]
    return {
        "tokens_per_s": percentile([r["tokens_per_s"] for r in recs], 0.5),
        "mfu": percentile(mfus, 0.5) if mfus else None,
        "records": len(recs),
    }


def static_markdown(rows: list[dict], why: str) -> str:
    """The static report: why, the sm_90 compile table and its issue-bound verdict (kernels.aot)."""
    from kernels import aot

    traffic = aot.rmsnorm_bwd_traffic(rows)
    cols = [c for c in aot.COLUMNS if c != "note"]
    parts = [
        "# steptime GPU report (static)",
        f"{why}. This is the ahead-of-time report instead: every kernel compiled for sm_90 "
        "without a GPU (`python -m kernels.aot`).",
        "## Compile report and issue-bound ceilings",
        f"HBM ceiling: {aot.HBM_SPEC_TBPS} TB/s spec, ~{aot.HBM_ACHIEVABLE_TBPS} TB/s achievable. "
        "`issue_tbps` = 132 SMs x 4 schedulers x 1.98 GHz x elements per warp-instruction x "
        "bytes per element, from the SASS instructions of each kernel's steady-state loop.",
        md_table(rows, cols),
    ]
    slow = [r for r in rows if r["issue_tbps"] < aot.HBM_ACHIEVABLE_TBPS]
    verdict = ", ".join(f"{r['kernel']} {r['dtype']} {r['hidden']}" for r in slow)
    parts.append(f"Issue-bound below {aot.HBM_ACHIEVABLE_TBPS} TB/s: {verdict or 'none'}.")
    if traffic:
        parts += ["## RMSNorm backward traffic (4096 rows)", md_table(traffic, list(traffic[0]))]
    return "\n\n".join(parts) + "\n"


def build_report(env: dict, tests: dict, kernel_rows: list[dict], runs: list[dict],
                 sweep_rows: list[dict], pngs: list[str]) -> str:  # fmt: skip
    """REPORT.md of a CUDA run from its parts (each may be empty when its step failed)."""
    targets = kernel_targets(kernel_rows)
    for r in runs:
        r["pass"] = None if r.get("mfu") is None or not r["compile"] else r["mfu"] >= MFU_GOAL
    parts = ["# steptime GPU report", "## Environment", md_table([env], list(env))]
    parts += [
        "## CUDA test set (tests/kernels, compiled Triton on CUDA)",
        md_table([tests], list(tests)),
    ]
    parts += ["## Targets", md_table(targets, ["target", "measured", "unit", "goal",
                                               "pct_copy_bw", "pass"])]  # fmt: skip
    kcols = ["op", "provider", "mode", "dtype", "shape", "p50_ms", "gbps", "pct_copy_bw", "status"]
    parts += ["## Kernels (bench kernels --op all --dtype bf16)", md_table(kernel_rows, kcols)]
    parts += [
        f"## Trainer throughput, 124M preset (MFU goal with compile: >= {MFU_GOAL:.0%})",
        md_table(runs, ["compile", "tokens_per_s", "mfu", "records", "status", "pass"]),
    ]
    scols = ["config_id", "n_layer", "n_embd", "status", "step_ms_median", "host_ms",
             "tokens_per_s", "mfu", "kernels", "dtype"]  # fmt: skip
    parts += ["## bench sweep (6 configs, 2 minutes)", md_table(sweep_rows, scols)]
    parts += ["## Plots"] + [f"![{Path(p).stem}]({p})" for p in pngs]
    return "\n\n".join(parts) + "\n"


def _run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> int:
    """Run one step with its output in ``log``; a timeout or a crash is a nonzero code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"gpu-report: {' '.join(cmd)}", file=sys.stderr)
    with open(log, "w") as fh:
        try:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                  env=env, cwd=ROOT).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            fh.write(f"\ntimed out after {timeout} s\n")
            return 124


def run_tests(out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["STEPTIME_TEST_DEVICE"] = "cuda"
    xml = out / "logs" / "kernel-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "kernels")]
    cmd.append(f"--junitxml={xml}")
    rc = _run(cmd, out / "logs" / "kernel-tests.log", 1800, env)
    res = {"exit_code": rc, "log": "logs/kernel-tests.log"}
    try:
        import xml.etree.ElementTree as ET

        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        for k in ("tests", "failures", "errors", "skipped"):
            res[k] = int(suite.get(k, 0))
    except (OSError, ValueError, IndexError, SyntaxError) as e:
        res["message"] = f"no junit xml: {e}"
    return res


def run_kernel_bench(out: Path) -> list[dict]:
    kdir = out / "kernels"
    cmd = [sys.executable, "-m", "bench", "kernels", "--op", "all", "--dtype", "bf16"]
    _run(cmd + ["--out", str(kdir)], out / "logs" / "bench-kernels.log", 3600)
    try:
        import pandas as pd

        return pd.read_csv(kdir / "kernels.csv").to_dict("records")
    except (OSError, ValueError):
        return []


def run_throughput(out: Path, compile_: bool, iters: int = 60) -> dict:
    run = out / ("train-compile" if compile_ else "train-eager")
    cmd = [sys.executable, "-m", "train", "--preset", "124M", "--iterations", str(iters),
           "--warmup-steps", "5", "--batch-size", "32", "--kernels", "triton", "--dtype",
           "bfloat16", "--log-interval", "5", "--eval-interval", str(10**9), "--eval-batches",
           "1", "--out", str(run), "--overwrite", "--no-progress"]  # fmt: skip
    rc = _run(cmd + (["--compile"] if compile_ else []), out / "logs" / f"{run.name}.log", 3600)
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        res = throughput_summary([json.loads(x) for x in lines if x.strip()])
    except (OSError, ValueError):
        res = {"tokens_per_s": None, "mfu": None, "records": 0}
    return {"compile": compile_, **res, "status": "ok" if rc == 0 else f"exit {rc}"}


def run_sweep(out: Path) -> list[dict]:
    sdir = out / "sweep"
    cmd = [sys.executable, "-m", "bench", "sweep", "--minutes", "0.34", *SWEEP, "--no-progress"]
    _run(cmd + ["--out", str(sdir)], out / "logs" / "bench-sweep.log", 3600)
    _run([sys.executable, "-m", "bench", "plot", str(sdir)], out / "logs" / "bench-plot.log", 600)
    from bench.sweep.results import load_rows

    return load_rows(str(sdir)) if sdir.is_dir() else []


def plot_targets(targets: list[dict], path: Path) -> None:
    """Measured / goal per target (above 1 is better for every bar: 'lower is better' inverted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in targets if t["measured"]]
    ratio = [
        t["measured"] / float(t["goal"].split()[-1])
        if t["goal"].startswith(">=")
        else float(t["goal"].split()[-1]) / t["measured"]
        for t in done
    ]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(done) + 1.5))
    ax.barh(
        [t["target"] for t in done],
        ratio,
        color=["tab:green" if r >= 1 else "tab:red" for r in ratio],
    )
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xlabel("measured / target (>= 1 meets the target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ceilings(rows: list[dict], path: Path) -> None:
    """Issue-bound ceiling of each compiled kernel beside the HBM ceilings (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kernels import aot

    labels = [f"{r['kernel']} {r['dtype']} {r['hidden']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(rows) + 1.6))
    ax.barh(labels, [r["issue_tbps"] for r in rows], color="tab:blue", label="issue-bound ceiling")
    ax.axvline(aot.HBM_SPEC_TBPS, color="k", ls="--", lw=1, label="HBM3 spec 3.35 TB/s")
    ax.axvline(aot.HBM_ACHIEVABLE_TBPS, color="tab:red", lw=1, label="achievable ~3.0 TB/s")
    ax.set_xscale("log")
    ax.set_xlabel("TB/s (sm_90, static, from the SASS)")
    ax.tick_params(axis="y", labelsize=6)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def environment() -> dict:
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    env["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return env


def _gpu_run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    tests = run_tests(out)
    kernel_rows = run_kernel_bench(out)
    runs = [run_throughput(out, False), run_throughput(out, True)]
    sweep_rows = run_sweep(out)
    plot_targets(kernel_targets(kernel_rows), out / "targets.png")
    pngs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    atomic_write(
        str(out / "REPORT.md"), build_report(env, tests, kernel_rows, runs, sweep_rows, pngs)
    )


def _body(argv) -> int:
    ap = ArgParser(prog="python -m bench.gpu_report", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-report", metavar="DIR", help="report folder")
    ap.add_argument(
        "--only", default=None, metavar="NAME", help="static report: only these kernels"
    )
    a = ap.parse_args(argv)
    import torch

    out = Path(a.out).resolve()  # the steps run in the repository folder
    if torch.cuda.is_available():
        _gpu_run(out)
        print(f"wrote {out / 'REPORT.md'}", file=sys.stderr)
        return 0
    print("no CUDA device here: writing the static report (AOT compile table, issue-bound "
          "ceilings) instead of measurements", file=sys.stderr)  # fmt: skip
    from kernels import aot

    try:
        rows = aot.report("sm_90", a.only)
    except (ImportError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        raise UserError(f"the AOT compile report failed: {str(e).splitlines()[0]}") from None
    if not rows:
        raise UserError(f"no kernel matches --only {a.only!r}")
    text = static_markdown(rows, f"No CUDA device on this machine ({environment()['date']})")
    out.mkdir(parents=True, exist_ok=True)
    plot_ceilings(rows, out / "ceilings.png")
    atomic_write(str(out / "REPORT.md"), text + "\n![ceilings](ceilings.png)\n")
    atomic_write(str(out / "aot_report.json"), "".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {out / 'REPORT.md'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_body, argv, interrupted="rerun `make gpu-report` to start over")


if __name__ == "__main__":
    raise SystemExit(main())
