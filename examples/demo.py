"""`make demo`: the whole steptime chain on the CPU, in a few minutes, on the embedded corpus.

1. train: a tiny Llama-style model with the WSD schedule on the embedded corpus (the stdlib's own
   source, byte-level); the loss falls.
2. bench sweep: a small wall-clock sweep of tiny configs (one subprocess per config), its table.
3. timemodel fit: step time regressed on params, FLOPs and memory traffic, k-fold CV side by side.
4. timemodel fit-loss: Chinchilla approach 3 on the Epoch-digitised Chinchilla points (if present).
5. timemodel predict and search: step time, tokens and loss for a config, and the best configs for
   a wall-clock budget.
6. kernels.aot: the sm_90 compile report of our Triton kernels (registers, spills, load widths).

Everything is written under `runs/demo/` (ignored by git). Each step prints a header, the exact
command it runs, and its output; the demo stops at the first failing step with its exit code.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "demo"
CHINCHILLA = ROOT.parent / "shared" / "data" / "chinchilla" / "epoch_svg_extracted_data.csv"


def run(title: str, args: list[str]) -> None:
    print(f"\n=== {title}\n$ {' '.join(shlex.quote(a) for a in args)}", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    t0 = time.time()
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env)
    if r.returncode != 0:
        print(f"demo: step '{title}' failed with exit code {r.returncode}", file=sys.stderr)
        sys.exit(r.returncode)
    print(f"--- {title}: {time.time() - t0:.1f} s", flush=True)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    py = ["-m"]
    run(
        "1. train a tiny model with WSD on the embedded corpus",
        py
        + [
            "train",
            "--preset",
            "tiny",
            "--scheduler",
            "wsd",
            "--iterations",
            "300",
            "--warmup-steps",
            "30",
            "--wsd-fract-decay",
            "0.2",
            "--decay-type",
            "sqrt",
            "--lr",
            "3e-3",
            "--batch-size",
            "16",
            "--acc-steps",
            "1",
            "--eval-interval",
            "100",
            "--eval-batches",
            "4",
            "--log-interval",
            "50",
            "--no-progress",
            "--out",
            str(OUT / "train"),
        ],
    )
    sweep = OUT / "sweep"
    run(
        "2. bench sweep: 8 tiny configs, 0.05 min each",
        py
        + [
            "bench",
            "sweep",
            "--minutes",
            "0.05",
            "--preset",
            "tiny",
            "--n-layer",
            "1,2",
            "--n-embd",
            "32,64",
            "--batch-size",
            "4,16",
            "--n-head",
            "2",
            "--sequence-length",
            "64",
            "--out",
            str(sweep),
            "--no-progress",
        ],
    )
    run("2b. bench show", py + ["bench", "show", str(sweep), "--sort", "step_ms_median"])
    example = ROOT / "examples" / "cpu_sweep"
    data = example if (example / "results.csv").is_file() else sweep
    tm = OUT / "tm.json"
    run(
        f"3. timemodel fit on {data.relative_to(ROOT)}",
        py + ["timemodel", "fit", str(data), "--out", str(tm), "--folds", "4"],
    )
    law = OUT / "law.json"
    if CHINCHILLA.is_file():
        run(
            "4. timemodel fit-loss: Chinchilla approach 3 on Epoch's digitised points",
            py
            + [
                "timemodel",
                "fit-loss",
                str(CHINCHILLA),
                "--out",
                str(law),
                "--params-col",
                "Model Size",
                "--loss-col",
                "loss",
                "--tokens-from-flops",
                "Training FLOP",
                "--drop-highest",
                "5",
                "--bootstrap",
                "20",
                "--budgets",
                "1e21,5.88e23",
            ],
        )
    else:
        print(f"\n(skipping step 4: {CHINCHILLA} not found; predict/search run without a loss law)")
    extra = ["--loss-law", str(law)] if law.is_file() else []
    run(
        "5. timemodel predict: the small preset for 0.01 hours on this CPU",
        py
        + [
            "timemodel",
            "predict",
            str(tm),
            "--preset",
            "small",
            "--batch-size",
            "8",
            "--hours",
            "0.01",
            *extra,
        ],
    )
    if law.is_file():
        run(
            "5b. timemodel search: best configs for 0.01 hours on this CPU",
            py
            + [
                "timemodel",
                "search",
                "--time-model",
                str(tm),
                "--loss-law",
                str(law),
                "--hours",
                "0.01",
                "--top",
                "10",
                "--space",
                "small",
            ],
        )
    run(
        "6. sm_90 compile report of our Triton kernels (no GPU needed)",
        py + ["kernels.aot", "--arch", "sm_90"],
    )
    print(f"\ndemo: done; outputs under {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
