"""Adaptive repeats: re-measure a config until the median of its step times is known well enough.

`bench sweep --repeat K --repeat-until PCT --max-repeat M` first measures every config K times,
interleaved; then, round after round, it re-measures (once per round, interleaved again) every
config whose median step time is still uncertain by more than PCT percent, until none is or a
config has M measurements. On a noisy machine the fastest configs are the noisiest (a few ms of
Python, at the mercy of the machine's speed from one second to the next), and a fixed K spends
its repeats where they are least needed.

The uncertainty is the standard error of the median of the config's repeat medians
(`step_ms_median` of its rows), in percent of that median, from a robust spread:

    sigma = 1.4826 * MAD        (the normal-consistent median absolute deviation)
    SE(median) = 1.2533 * sigma / sqrt(n)

1.2533 = sqrt(pi / 2) is the asymptotic efficiency loss of the median against the mean for normal
samples (e.g. Wilcox, *Introduction to Robust Estimation and Hypothesis Testing*, 4th ed., 2017,
sec. 4.9); with K >= 3 repeats the MAD is defined but crude, which is why the rounds go on until
the estimate itself settles. Everything here is recomputed from the rows in the folder, so a
killed adaptive sweep resumes where it stopped.
"""

from __future__ import annotations

import math
import statistics

from . import results

TIME_COL = "step_ms_median"


def median_se_pct(times: list[float]) -> float:
    """Standard error of the median of `times`, in percent of it (inf below 3 values)."""
    if len(times) < 3:
        return math.inf
    med = statistics.median(times)
    mad = statistics.median(abs(t - med) for t in times)
    sigma = 1.4826 * mad
    return 100.0 * 1.2533 * sigma / math.sqrt(len(times)) / med


def config_times(rows: list[dict]) -> dict[str, list[float]]:
    """config_id -> step times (ms) of its ok measurement rows."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if r.get("kind", "config") != "config" or r.get("status") != "ok":
            continue
        t = r.get(TIME_COL)
        if isinstance(t, (int, float)) and math.isfinite(t) and t > 0:
            out.setdefault(str(r["config_id"]), []).append(float(t))
    return out


def next_repeats(
    valid: list[tuple[dict, str]],
    rows: list[dict],
    repeat: int,
    until_pct: float,
    max_repeat: int,
    retry: tuple[str, ...] = results.RETRY_DEFAULT,
) -> list[tuple[dict, str, int]]:
    """[(row, config_id, repeat index)] to measure in the next round, in grid order.

    A config takes part once all of its first `repeat` measurements are ok, while it has fewer
    than `max_repeat` ok measurements and median_se_pct of them is above `until_pct`. Its new
    measurement gets the lowest repeat index >= `repeat` without a final row (a failed one is
    retried under the same index). A config with a failed final row (oom, nan) takes no part.
    """
    final = results.final_keys(rows, retry)
    failed = {
        str(r["config_id"])
        for r in rows
        if r.get("kind", "config") == "config"
        and r.get("status") in results.FINAL_STATUSES
        and r.get("status") not in ("ok", *retry)
    }
    times = config_times(rows)
    out = []
    for row, cid in valid:
        t = times.get(cid, [])
        if cid in failed or len(t) >= max_repeat:
            continue
        if any((cid, k) not in final for k in range(repeat)):
            continue  # its base repeats are not all measured yet
        if median_se_pct(t) <= until_pct:
            continue
        k = repeat
        while (cid, k) in final:
            k += 1
        out.append((row, cid, k))
    return out


def round_ratio(before: dict[str, list[float]], got: list[dict]) -> float | None:
    """Median over a round's ok rows of (new step time / the config's median before the round).

    The configs re-measured in a round are a subset, measured minutes after the others: if the
    machine ran faster or slower then, their medians move for that reason alone. This ratio
    reports it (None when no row of the round is ok)."""
    ratios = []
    for cid, times in config_times(got).items():
        if before.get(cid):
            ratios += [t / statistics.median(before[cid]) for t in times]
    return statistics.median(ratios) if ratios else None


def summary(valid: list[tuple[dict, str]], rows: list[dict], until_pct: float) -> str:
    """One line: how many configs' medians are known to within until_pct, and the worst one."""
    times = config_times(rows)
    ses = {
        cid: median_se_pct(times.get(cid, [])) for _, cid in valid if len(times.get(cid, [])) >= 3
    }
    if not ses:
        return "adaptive repeats: no config has 3 ok measurements yet"
    within = sum(1 for v in ses.values() if v <= until_pct)
    worst = max(ses, key=ses.get)
    counts = [len(times[c]) for c in ses]
    return (
        f"adaptive repeats: {within} of {len(ses)} config(s) have their median step time to "
        f"within {until_pct:g}% (standard error); {min(counts)}-{max(counts)} measurements each; "
        f"least certain {worst} at {ses[worst]:.1f}% over {len(times[worst])}"
    )
