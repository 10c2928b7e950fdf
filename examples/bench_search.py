"""Benchmark `timemodel search`: score and rank the ~1e6-candidate "default" space, report the time.

Usage:
  python examples/bench_search.py                       # synthetic H100-like time model and Chinchilla law
  python examples/bench_search.py --time-model tm.json --loss-law law.json [--repeats 3]

The synthetic time model is step_s = 5 ms + FLOPs / (0.4 * 989e12) + bytes / (0.7 * 3.0e12) (an H100 at
40% of peak FLOPs and 70% of bandwidth), the law is Epoch's replication of Chinchilla (spec/seeds.md §4.2).
The timed region is exactly what the CLI times: candidates from the grid, costs, step time, memory filter,
loss, top-k ranking; imports and printing are excluded. Prints the best of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from timemodel import search as tsearch

SYNTH_TM = {
    "features": ["flops_per_step", "memory_traffic"],
    "intercept": 5e-3,
    "coefficients": {"flops_per_step": 1 / (0.4 * 989e12), "memory_traffic": 1 / (0.7 * 3.0e12)},
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
    "convention": "porian",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--time-model", default=None)
    ap.add_argument("--loss-law", default=None)
    ap.add_argument("--space", default="default")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    tm = json.load(open(args.time_model)) if args.time_model else SYNTH_TM
    law = json.load(open(args.loss_law)) if args.loss_law else SYNTH_LAW
    space = tsearch.parse_space(args.space)
    impl = {k: tm[k] for k in ("dtype", "kernels") if tm.get(k)}
    times = []
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        cand = tsearch.candidates(space)
        scored = tsearch.score(
            cand,
            tm,
            law,
            hours=args.hours,
            vocab_size=50304,
            sequence_length=512,
            max_memory_gb=80.0,
            impl=impl,
        )
        order = tsearch.rank(scored, 20)
        times.append(time.perf_counter() - t0)
    n = tsearch.space_size(space)
    best = order[0]
    print(
        f"search over {n:,} grid points ({len(cand['n_layer']):,} valid, {len(scored['loss']):,} within 80 GB "
        f"and {args.hours:g} h) on {os.cpu_count()} CPU(s): best {min(times):.2f} s, "
        f"median {float(np.median(times)):.2f} s of {len(times)}"
    )
    print(
        f"best: n_layer={scored['n_layer'][best]:.0f} n_embd={scored['n_embd'][best]:.0f} "
        f"n_head={scored['n_head'][best]:.0f} ffn_hidden={scored['ffn_hidden'][best]:.0f} "
        f"batch={scored['batch_size'][best]:.0f} params={scored['params'][best]:.3g} "
        f"tokens={scored['tokens'][best]:.3g} loss={scored['loss'][best]:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
