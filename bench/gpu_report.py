"""`python -m bench.gpu_report` (`make gpu-report`): everything a borrowed GPU should measure, in
one capped command, written to gpu-report/REPORT.md.

A GPU may be ours for minutes, so the stages run in order of value, each under its own time cap
(`STAGES`; the caps add up to `TOTAL_CAP_S` = 8 minutes, and a test pins that):

1. `kernels`: `bench kernels --op all --dtype bf16` (ours against torch, torch.compile, Liger and
   apex when importable) at the target shapes, GPU time and call time;
2. `train-*`: the 124M preset on random tokens over the GPT-2 vocabulary (so MFU is the real
   model's, not a byte model's), bf16, batch 32 x 512: compiled with our kernels, compiled torch,
   then eager both; no checkpoint is written;
3. `cuda-tests`: `pytest tests/kernels` on CUDA tensors (STEPTIME_TEST_DEVICE=cuda);
4. `sweep`: an 8-config `bench sweep` of the 124M family.

A stage that fails or runs out of its cap is recorded as such and the next one starts; REPORT.md is
rewritten after every stage, so even a killed run leaves a report. The targets table is printed
last. Without CUDA it writes the static report instead (every kernel compiled for sm_90, its SASS
read: `kernels.aot`), exit 0.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core import ArgParser, UserError, atomic_write, percentile, run_cli

ROOT = Path(__file__).resolve().parents[1]  # the repository: tests/ and the packages live here


@dataclass(frozen=True)
class Stage:
    name: str
    cap_s: int  # wall-clock cap of the stage's command
    what: str


# In order of value. The caps were sized from the first H200 run (kernels 67 s, compiled 124M runs
# 43-51 s for 40 steps, eager 16-18 s, the CUDA test set 55 s) with room for the new providers.
STAGES = (
    Stage("kernels", 120, "kernels vs torch, torch.compile, Liger at the target shapes"),
    Stage("train-compile-ours", 75, "124M, --compile, our Triton kernels"),
    Stage("train-compile-torch", 75, "124M, --compile, torch kernels"),
    Stage("train-eager-ours", 35, "124M, eager, our Triton kernels"),
    Stage("train-eager-torch", 35, "124M, eager, torch kernels"),
    Stage("cuda-tests", 80, "pytest tests/kernels on CUDA"),
    Stage("sweep", 60, "bench sweep, 8 configs of the 124M family"),
)
TOTAL_CAP_S = 480  # one short lease: 8 minutes of GPU time in all
TRAIN = {  # stage -> (compile, kernels, iterations)
    "train-compile-ours": (True, "triton", 50),
    "train-compile-torch": (True, "torch", 50),
    "train-eager-ours": (False, "triton", 40),
    "train-eager-torch": (False, "torch", 40),
}
GPT2_VOCAB = 50257  # random tokens over it; the 124M preset's embedding is 50304 (padded)
TOKENS = 2_000_000  # 4 MB of uint16: 60 steps of 32 x 512 without reusing a batch
SWEEP = ["--preset", "124M", "--n-layer", "4,8", "--n-embd", "512,768", "--batch-size", "16,32"]
SWEEP_MINUTES = "0.02"  # 1.2 s timed per config: 8 configs in about a minute with process starts
# (name, op, provider, mode, shape, metric, goal, higher is better): our kernels at bf16.
KERNEL_TARGETS = (
    ("RMSNorm fwd", "rmsnorm", "forward", "4096x4096", "pct_copy_bw", 85.0, True),
    ("RMSNorm bwd GPU time", "rmsnorm", "backward", "4096x4096", "gpu_us", 35.0, False),
    ("RMSNorm bwd call time", "rmsnorm", "backward", "4096x4096", "call_us", 60.0, False),
    ("SwiGLU bwd", "swiglu", "backward", "16384x2816", "pct_copy_bw", 85.0, True),
)
COMPILE_SPEEDUP_GOAL = 1.15  # ours compiled vs torch compiled, tokens/s
EAGER_SPEEDUP_GOAL = 1.5  # ours eager vs torch eager
MFU_GOAL = 0.45  # ours, compiled


def md_table(rows: list[dict], cols: list[str]) -> str:
    """A markdown table; floats get 4 significant digits, missing values are blank."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _metric(row: dict, metric: str) -> float | None:
    """A kernel row's metric: % of copy bandwidth, or a time in us (GPU time: back-to-back or
    graph replay; call time: one call, host included); None when the row lacks it."""
    if metric == "pct_copy_bw":
        v = row.get("pct_copy_bw")
    else:
        col = {"gpu_us": "gpu_ms", "call_us": "call_ms"}[metric]
        v = row.get(col)
        v = None if v is None else 1e3 * float(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def _row(rows: list[dict], op: str, mode: str, shape: str, provider: str = "ours") -> dict | None:
    for r in rows:
        key = (r.get("op"), r.get("mode"), str(r.get("shape")), r.get("provider"))
        if r.get("status") == "ok" and key == (op, mode, shape, provider):
            return r
    return None


def _target(name: str, measured, unit: str, goal: float, higher: bool) -> dict:
    ok = None if measured is None else (measured >= goal if higher else measured <= goal)
    sign = ">=" if higher else "<="
    return {"target": name, "measured": measured, "unit": unit, "goal": f"{sign} {goal:g}",
            "pass": ok}  # fmt: skip


def targets(kernel_rows: list[dict], runs: dict[str, dict]) -> list[dict]:
    """Every target of the round with its measurement (None: not measured in this report)."""
    out = []
    for name, op, mode, shape, metric, goal, higher in KERNEL_TARGETS:
        r = _row(kernel_rows, op, mode, shape)
        unit = "% copy" if metric == "pct_copy_bw" else "us"
        out.append(_target(f"{name} {shape} bf16", r and _metric(r, metric), unit, goal, higher))
    ce = _row(kernel_rows, "linear_ce", "full", "16384x768x50304")
    ce_torch = _row(kernel_rows, "linear_ce", "full", "16384x768x50304", "torch")
    ce_comp = _row(kernel_rows, "linear_ce", "full", "16384x768x50304", "torch_compile")
    mem = None
    if ce and ce_torch and ce.get("peak_mem_mb") and ce_torch.get("peak_mem_mb"):
        mem = float(ce["peak_mem_mb"]) / float(ce_torch["peak_mem_mb"])
    out.append(_target("Linear+CE 16384x768x50304 peak memory / torch", mem, "x", 0.25, False))
    t = None
    if ce and ce_comp and ce.get("p50_ms") and ce_comp.get("p50_ms"):
        t = float(ce["p50_ms"]) / float(ce_comp["p50_ms"])
    out.append(_target("Linear+CE 16384x768x50304 time / torch.compile", t, "x", 1.0, False))

    def tok(name: str):
        return (runs.get(name) or {}).get("tokens_per_s")

    def ratio(a, b):
        return a / b if a and b else None

    out.append(_target("124M compiled: ours / torch tokens/s",
                       ratio(tok("train-compile-ours"), tok("train-compile-torch")), "x",
                       COMPILE_SPEEDUP_GOAL, True))  # fmt: skip
    mfu = (runs.get("train-compile-ours") or {}).get("mfu")
    out.append(_target("124M compiled ours: MFU", mfu, "", MFU_GOAL, True))
    out.append(_target("124M eager: ours / torch tokens/s",
                       ratio(tok("train-eager-ours"), tok("train-eager-torch")), "x",
                       EAGER_SPEEDUP_GOAL, True))  # fmt: skip
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


def build_report(env: dict, stages: list[dict], kernel_rows: list[dict], runs: dict[str, dict],
                 tests: dict, sweep_rows: list[dict], pngs: list[str]) -> str:  # fmt: skip
    """REPORT.md of a CUDA run from its parts (each may be empty when its stage failed)."""
    parts = ["# steptime GPU report", "## Environment", md_table([env], list(env))]
    parts += [f"## Stages (caps sum to {TOTAL_CAP_S} s)",
              md_table(stages, ["stage", "what", "cap_s", "elapsed_s", "status"])]  # fmt: skip
    parts += ["## Targets", md_table(targets(kernel_rows, runs),
                                     ["target", "measured", "unit", "goal", "pass"])]  # fmt: skip
    kcols = ["op", "provider", "mode", "dtype", "shape", "gpu_ms", "call_ms", "p50_ms", "gbps",
             "pct_copy_bw", "peak_mem_mb", "status"]  # fmt: skip
    parts += ["## Kernels (bench kernels --op all --dtype bf16)", md_table(kernel_rows, kcols)]
    rows = [{"run": k, **v} for k, v in runs.items()]
    parts += ["## Trainer, 124M preset, random GPT-2 tokens, bf16, batch 32 x 512",
              md_table(rows, ["run", "tokens_per_s", "ms_per_step", "mfu", "records",
                              "status"])]  # fmt: skip
    parts += ["## CUDA test set (tests/kernels on CUDA)", md_table([tests], list(tests))]
    scols = ["config_id", "n_layer", "n_embd", "batch_size", "status", "step_ms_median",
             "host_ms", "tokens_per_s", "mfu", "kernels", "dtype", "message"]  # fmt: skip
    parts += ["## bench sweep (8 configs)", md_table(sweep_rows, scols)]
    parts += ["## Plots"] + [f"![{Path(p).stem}]({p})" for p in pngs]
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------- stages
def run_capped(cmd: list[str], log: Path, cap_s: float, env: dict | None = None) -> str:
    """Run one stage's command, output in `log`, killed (its whole process group) at `cap_s`.
    Returns "ok", "exit N" or "timeout"."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"gpu-report: {' '.join(cmd)}  (cap {cap_s:.0f} s)", file=sys.stderr, flush=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            fh.write(f"\ntimed out after {cap_s:.0f} s (the stage's cap)\n")
            return "timeout"
    return "ok" if rc == 0 else f"exit {rc}"


def random_tokens(path: Path) -> None:
    """TOKENS random token ids over the GPT-2 vocabulary, as a nanoGPT-style uint16 .bin."""
    import numpy as np

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng.integers(0, GPT2_VOCAB, TOKENS, dtype=np.uint16).tofile(path)


def train_command(out: Path, name: str) -> list[str]:
    compile_, kernels, iters = TRAIN[name]
    cmd = [sys.executable, "-m", "train", "--preset", "124M", "--data", str(out / "tokens.bin"),
           "--vocab-size", "50304", "--scheduler", "constant", "--warmup-steps", "0",
           "--iterations", str(iters), "--batch-size", "32", "--acc-steps", "1",
           "--sequence-length", "512", "--dtype", "bfloat16", "--kernels", kernels,
           "--log-interval", "5", "--eval-interval", "0", "--eval-batches", "1",
           "--final-ckpt", "false", "--branch-ckpt", "false", "--out", str(out / name),
           "--overwrite", "--no-progress"]  # fmt: skip
    return cmd + (["--compile"] if compile_ else [])


def stage_command(stage: Stage, out: Path) -> tuple[list[str], dict | None]:
    """The command of a stage (and its environment, None: this process's)."""
    py = sys.executable
    if stage.name == "kernels":
        return [py, "-m", "bench", "kernels", "--op", "all", "--dtype", "bf16", "--out",
                str(out / "kernels")], None  # fmt: skip
    if stage.name in TRAIN:
        return train_command(out, stage.name), None
    if stage.name == "cuda-tests":
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["STEPTIME_TEST_DEVICE"] = "cuda"
        xml = out / "logs" / "cuda-tests.xml"
        return [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "kernels"),
                f"--junitxml={xml}"], env  # fmt: skip
    if stage.name == "sweep":
        return [py, "-m", "bench", "sweep", "--minutes", SWEEP_MINUTES, *SWEEP, "--no-progress",
                "--out", str(out / "sweep")], None  # fmt: skip
    raise ValueError(stage.name)


def read_kernels(out: Path) -> list[dict]:
    try:
        import pandas as pd

        return pd.read_csv(out / "kernels" / "kernels.csv").to_dict("records")
    except (OSError, ValueError, ImportError):
        return []


def read_run(out: Path, name: str, status: str) -> dict:
    try:
        lines = (out / name / "metrics.jsonl").read_text().splitlines()
        res = throughput_summary([json.loads(x) for x in lines if x.strip()])
    except (OSError, ValueError):
        res = {"tokens_per_s": None, "mfu": None, "records": 0}
    tps = res.get("tokens_per_s")
    res["ms_per_step"] = 1e3 * 32 * 512 / tps if tps and not math.isnan(tps) else None
    return {**res, "status": status}


def read_tests(out: Path, status: str) -> dict:
    res = {"status": status, "log": "logs/cuda-tests.log"}
    try:
        import xml.etree.ElementTree as ET

        suite = ET.parse(out / "logs" / "cuda-tests.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        for k in ("tests", "failures", "errors", "skipped"):
            res[k] = int(suite.get(k, 0))
    except (OSError, ValueError, IndexError, SyntaxError) as e:
        res["message"] = f"no junit xml: {e}"
    return res


def read_sweep(out: Path) -> list[dict]:
    from bench.sweep.results import load_rows

    return load_rows(str(out / "sweep")) if (out / "sweep").is_dir() else []


def _gpu_run(out: Path, stages: tuple[Stage, ...] = STAGES) -> list[dict]:
    """Run the stages in order, each under its cap; REPORT.md after each. Returns the targets."""
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    random_tokens(out / "tokens.bin")
    done: list[dict] = []
    kernel_rows: list[dict] = []
    runs: dict[str, dict] = {}
    tests: dict = {}
    sweep_rows: list[dict] = []
    try:
        for st in stages:
            cmd, cenv = stage_command(st, out)
            t0 = time.perf_counter()
            status = run_capped(cmd, out / "logs" / f"{st.name}.log", st.cap_s, cenv)
            done.append({"stage": st.name, "what": st.what, "cap_s": st.cap_s,
                         "elapsed_s": round(time.perf_counter() - t0, 1),
                         "status": status})  # fmt: skip
            if st.name == "kernels":
                kernel_rows = read_kernels(out)
            elif st.name in TRAIN:
                runs[st.name] = read_run(out, st.name, status)
            elif st.name == "cuda-tests":
                tests = read_tests(out, status)
            elif st.name == "sweep":
                sweep_rows = read_sweep(out)
            pngs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
            text = build_report(env, done, kernel_rows, runs, tests, sweep_rows, pngs)
            atomic_write(str(out / "REPORT.md"), text)
    finally:
        (out / "tokens.bin").unlink(missing_ok=True)  # nothing large stays behind
    return targets(kernel_rows, runs)


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
    ax.set_title("Issue-bound ceiling of each kernel vs HBM bandwidth (sm_90, no GPU needed)")
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


def _body(argv) -> int:
    ap = ArgParser(prog="python -m bench.gpu_report", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-report", metavar="DIR", help="report folder")
    ap.add_argument(
        "--only", default=None, metavar="NAME", help="static report: only these kernels"
    )
    a = ap.parse_args(argv)
    import torch

    out = Path(a.out).resolve()  # the stages run in the repository folder
    if torch.cuda.is_available():
        got = _gpu_run(out)
        print(f"wrote {out / 'REPORT.md'}", file=sys.stderr)
        print(md_table(got, ["target", "measured", "unit", "goal", "pass"]))  # targets last
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
