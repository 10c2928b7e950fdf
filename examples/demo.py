"""`make demo`: the whole steptime chain on this machine's CPU, on the embedded corpus (~5 minutes).

1. train: a tiny Llama-style model with the WSD schedule; the loss falls from ln 256 = 5.55.
2. bench sweep: 8 tiny configs (depth x width x batch), each trained with warmup -> stable ->
   cooldown fitted into a wall-clock budget, at two budgets (3 and 6 seconds) so that tokens vary.
3. bench show: the measured table.
4. timemodel fit: step time regressed on the configs' costs, held-out error per feature set.
5. timemodel fit-loss: a loss law L(N, D) with 20 bootstrap refits, fitted on the sweep's own val
   losses (this machine's numbers, valid only inside the N and D range it prints).
6. timemodel predict and search: step time and final loss of a config, and the best configs of a
   small space for a 2-minute budget.
7. timemodel replicate-chinchilla: a REPLICATION of Hoffmann et al.'s published fit on the
   Epoch-digitised points shipped in timemodel/data/ (70M-16B models; not a law for CPU models).
8. kernels.aot: the sm_90 (H100) compile report of our Triton kernels, made without a GPU.

Everything is written under `runs/demo/` (ignored by git) and replaced on each run. Each step prints
its command and output; the demo stops at the first failing step with that step's exit code.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "demo"
GRID = "--preset tiny --n-layer 1,2 --n-embd 32,64 --n-head 2 --batch-size 4,16 --acc-steps 1"
SWEEP = "--scheduler wsd --wsd-fract-decay 0.2 --decay-type sqrt --warmup-steps 5 --lr 3e-3"

STEPS = [
    (
        "1. train a tiny model with WSD on the embedded corpus",
        "train --preset tiny --scheduler wsd --iterations 300 --warmup-steps 30 "
        "--wsd-fract-decay 0.2 --decay-type sqrt --lr 3e-3 --batch-size 16 --acc-steps 1 "
        "--eval-interval 100 --eval-batches 4 --log-interval 50 --no-progress --out {out}/train",
    ),
    (
        "2a. bench sweep: 8 configs, WSD fitted into 3 s each",
        f"bench sweep --minutes 0.05 {GRID} {SWEEP} --no-progress --out {{out}}/sweep3s",
    ),
    (
        "2b. bench sweep: the same 8 configs, 6 s each",
        f"bench sweep --minutes 0.1 {GRID} {SWEEP} --no-progress --out {{out}}/sweep6s",
    ),
    (
        "3. bench show: fastest first",
        "bench show {out}/sweep6s --sort step_ms_median --columns "
        "config_id,n_layer,n_embd,batch_size,step_ms_median,tokens_per_s,tokens_seen,val_loss",
    ),
    (
        "4. timemodel fit: step time on this CPU, 4-fold held-out error per feature set",
        "timemodel fit {out}/sweep3s {out}/sweep6s --folds 4 --out {out}/tm.json "
        "--plot {out}/fit.png",
    ),
    (
        "5. timemodel fit-loss: a loss law from this machine's own sweeps",
        "timemodel fit-loss {out}/sweep3s {out}/sweep6s --bootstrap 20 --out {out}/law.json",
    ),
    (
        "6a. timemodel predict: a swept config, 2 minutes",
        "timemodel predict {out}/tm.json --preset tiny --n-layer 2 --n-embd 64 --n-head 2 "
        "--batch-size 16 --hours 0.0333 --loss-law {out}/law.json",
    ),
    (
        "6b. timemodel search: the best small configs for 2 minutes on this CPU",
        "timemodel search --time-model {out}/tm.json --loss-law {out}/law.json --hours 0.0333 "
        "--space small --top 8 --out {out}/search.csv",
    ),
    (
        "7. REPLICATION of a published fit: Chinchilla approach 3 on Epoch's digitised points",
        "timemodel replicate-chinchilla --out {out}/chinchilla.json",
    ),
    ("8. the sm_90 compile report of our Triton kernels (no GPU needed)", "-m kernels.aot"),
]


def shown(cmd: str) -> str:
    """A step's command as a user would type it (a module run gets its `python`)."""
    text = cmd.format(out=OUT.relative_to(ROOT))
    return f"python {text}" if text.startswith("-m ") else text


def _argv(cmd: str) -> list[str]:
    args = shlex.split(cmd.format(out=OUT))
    if args[0] == "-m":
        return [sys.executable, *args]
    return [sys.executable, "-m", args[0], *args[1:]]


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "STEPTIME_SMOKE")}
    t_all = time.time()
    for title, cmd in STEPS:
        print(f"\n=== {title}\n$ {shown(cmd)}", flush=True)
        t0 = time.time()
        r = subprocess.run(_argv(cmd), cwd=ROOT, env=env)
        if r.returncode != 0:
            print(f"demo: step '{title}' failed with exit code {r.returncode}", file=sys.stderr)
            return r.returncode
        print(f"--- {time.time() - t0:.1f} s", flush=True)
    print(f"\ndemo done in {time.time() - t_all:.0f} s; everything is in {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
