"""Machine drift during a sweep, seen through a fixed reference config re-timed every N configs.

`bench sweep --reference-every N` re-times the grid's first valid config before the first config,
after every N configs and at the end. Its rows live in OUT/reference/ (OUT/reference-<i>of<n>/
per shard), apart from the grid's rows. The drift at time t is the reference's median step time
linearly interpolated at t, divided by the reference's first timing; load, thermal or clock
changes and noisy neighbours all show up in it. The report is printed and written to
OUT/<reference dir>/drift.json; with `--drift-correct` every ok row measured against that
reference gets `drift` and `step_ms_corrected = step_ms_median / drift` (the raw column is kept).
"""

from __future__ import annotations

import bisect
import json
import math
import os

from bench.sweep import results
from bench.sweep.grid import validate
from core import atomic_write


def ref_group(shard: tuple[int, int] | None) -> str:
    """The reference folder's name inside OUT (one per shard: shards run at the same time)."""
    return f"reference-{shard[0]}of{shard[1]}" if shard else "reference"


def reference_row(rows: list[dict]) -> dict:
    """The grid's first valid config (the same for every shard of the grid)."""
    for r in rows:
        if validate(r) is None:
            return r
    raise ValueError("the grid has no valid config to use as the reference")


def next_seq(out_dir: str, shard: tuple[int, int] | None) -> int:
    """The next free reference index in this shard's reference folder (rerun keeps history)."""
    have = results.load_rows(os.path.join(out_dir, ref_group(shard)))
    return 1 + max((int(r.get("repeat") or 0) for r in have), default=-1)


def _series(refs: list[dict]) -> tuple[list[float], list[float]]:
    ok = [r for r in refs if r.get("status") == "ok" and _num(r.get("step_ms_median"))]
    ok.sort(key=lambda r: r.get("measured_at") or r.get("written_at") or 0.0)
    ts = [float(r.get("measured_at") or r.get("written_at") or 0.0) for r in ok]
    return ts, [float(r["step_ms_median"]) for r in ok]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def drift_at(t: float, ts: list[float], ms: list[float]) -> float:
    """Reference time at t (linear between timings, flat outside) over the first timing."""
    if not ms:
        return math.nan
    i = bisect.bisect_left(ts, t)
    if i <= 0:
        v = ms[0]
    elif i >= len(ts):
        v = ms[-1]
    else:
        w = (t - ts[i - 1]) / (ts[i] - ts[i - 1]) if ts[i] > ts[i - 1] else 1.0
        v = ms[i - 1] + w * (ms[i] - ms[i - 1])
    return v / ms[0]


def report(opts, log) -> dict:
    """Print the drift of this shard's reference; with opts.drift_correct, add corrected rows."""
    group = ref_group(opts.shard)
    folder = os.path.join(opts.out_dir, group)
    ts, ms = _series(results.load_rows(folder))
    if not ms:
        log(f"drift: no ok timing of the reference config in {folder}")
        return {"reference_timings": 0}
    rel = [m / ms[0] - 1.0 for m in ms]
    rep = {
        "reference_timings": len(ms),
        "reference_ms": ms,
        "drift_min_pct": 100 * min(rel),
        "drift_max_pct": 100 * max(rel),
        "drift_max_abs_pct": 100 * max(abs(x) for x in rel),
    }
    if opts.drift_correct:
        rep["corrected"] = correct_rows(opts.out_dir, group, ts, ms)
    atomic_write(os.path.join(folder, "drift.json"), json.dumps(rep, indent=1) + "\n")
    log(
        f"drift: reference timed {len(ms)}x, {ms[0]:.3g} ms first, {rep['drift_min_pct']:+.1f}% .. "
        f"{rep['drift_max_pct']:+.1f}% of it"
        + (f"; {rep['corrected']} row(s) corrected" if opts.drift_correct else "")
    )
    return rep


def correct_rows(out_dir: str, group: str, ts: list[float], ms: list[float]) -> int:
    """Append `drift` and `step_ms_corrected` to the ok rows measured against `group`."""
    n = 0
    for r in results.load_rows(out_dir):
        if r.get("ref_group") != group or r.get("status") != "ok" or r.get("kind") != "config":
            continue
        t = float(r.get("measured_at") or r.get("written_at") or 0.0)
        d = drift_at(t, ts, ms)
        if not (_num(d) and _num(r.get("step_ms_median"))):
            continue
        if r.get("drift") == d:
            continue
        fixed = dict(r, drift=d, step_ms_corrected=float(r["step_ms_median"]) / d)
        fixed.pop("written_at", None)
        results.append_row(out_dir, fixed)
        n += 1
    return n
