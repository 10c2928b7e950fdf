"""Benchmark `timemodel search`: score and rank the ~1e6-candidate "default" space, report the time.

Usage:
  python examples/bench_search.py                      # synthetic H100-like time model and law
  python examples/bench_search.py --time-model tm.json --loss-law law.json [--repeats 3]

The synthetic time model is step_s = 5 ms + 8 us per kernel launch + FLOPs / (0.4 * peak) +
bytes / (0.7 * 3.35e12): an H100 SXM at 40% of its bf16 peak (`model.costs.peak_flops`) and 70% of
its HBM3 bandwidth. The law is Epoch AI's replication of Chinchilla (Besiroglu et al. 2024,
arXiv:2404.10102), with its fitted range, so the warning for other scales shows too. The timed
region is what the CLI times: candidates from the grid, features from `costs.vectorized`, step
time, memory filter, loss, top-k ranking; imports and printing are excluded. Prints the best of
`--repeats` runs.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from core import ArgParser, UserError, run_cli
from model import costs
from timemodel import models
from timemodel import search as tsearch

SYNTH_TM = {
    "features": ["launches", "flops", "bytes"],
    "intercept": 5e-3,
    "coefficients": {
        "launches": 8e-6,
        "flops": 1 / (0.4 * costs.peak_flops("H100", "bfloat16")),
        "bytes": 1 / (0.7 * 3.35e12),
    },
    "feature_ranges": {},
    "device_name": "synthetic H100",
    "dtype": "bfloat16",
    "kernels": "triton",
}
SYNTH_LAW = {
    "E": 1.817,
    "A": 477.8,
    "B": 2143.9,
    "alpha": 0.3473,
    "beta": 0.3672,
    "convention": "total",
    "b_crit": None,
    "fit_range": {"N": [5.7e7, 1.6e10], "D": [8.2e8, 3.2e11]},  # the 240 points fitted
}


def _args(argv):
    ap = ArgParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-model", default=None, metavar="TM_JSON", help="from timemodel fit")
    ap.add_argument("--loss-law", default=None, metavar="LAW_JSON", help="from timemodel fit-loss")
    ap.add_argument("--space", default="default", metavar="SPEC", help="as timemodel search's")
    ap.add_argument("--hours", type=float, default=24.0, metavar="H", help="wall-clock budget")
    ap.add_argument("--repeats", type=int, default=3, metavar="K", help="timed repetitions")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    return args


def _body(argv) -> int:
    args = _args(argv)
    tm = models.read_time_model(args.time_model) if args.time_model else SYNTH_TM
    law = models.read_law(args.loss_law) if args.loss_law else SYNTH_LAW
    space = tsearch.parse_space(args.space)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cand, scored, order, _ = tsearch.run_search(
            space,
            tm,
            law,
            top=20,
            hours=args.hours,
            vocab_size=50304,
            sequence_length=512,
            max_memory_gb=80.0,
        )
        times.append(time.perf_counter() - t0)
    best = order[0]
    print(
        f"search over {tsearch.space_size(space):,} grid points ({len(cand['n_layer']):,} valid, "
        f"{len(scored['loss']):,} within 80 GB and {args.hours:g} h) on {os.cpu_count()} CPU(s): "
        f"best {min(times):.2f} s, median {float(np.median(times)):.2f} s of {len(times)}"
    )
    print(
        f"best: n_layer={scored['n_layer'][best]:.0f} n_embd={scored['n_embd'][best]:.0f} "
        f"n_head={scored['n_head'][best]:.0f} ffn_hidden={scored['ffn_hidden'][best]:.0f} "
        f"batch={scored['batch_size'][best]:.0f} params={scored['params'][best]:.3g} "
        f"tokens={scored['tokens'][best]:.3g} loss={scored['loss'][best]:.4f}"
    )
    return 0


def main(argv=None) -> int:
    return run_cli(_body, argv)


if __name__ == "__main__":
    sys.exit(main())
