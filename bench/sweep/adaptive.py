"""Adaptive repeats: re-measure a config until the median of its step times is known well enough.

`bench sweep --repeat K --repeat-until PCT --max-repeat M` first measures every config K times,
interleaved; then, round after round, it re-measures (once per round, interleaved again) every
config whose median step time is still uncertain by more than PCT percent, until none is or a
config has M measurements. On a noisy machine the fastest configs are the noisiest (a few ms of
Python, at the mercy of the machine's speed from one second to the next), and a fixed K spends
its repeats where they are least needed.

The uncertainty is the standard error of the median of the config's repeat medians
(`step_ms_median` of its rows), in percent of that median: the larger of two estimates,

    MAD:    1.2533 * 1.4826 * MAD / sqrt(n)
            (1.4826 * MAD: the normal-consistent spread; 1.2533 = sqrt(pi / 2), the median's
            efficiency loss against the mean for normal samples)
    McKean-Schrader: (x_(n-c+1) - x_(c)) / (2 z),  c = round((n + 1) / 2 - z * sqrt(n / 4))
            (z = 2.5758, the normal 0.995 quantile; x_(i) sorted; c at least 1. McKean &
            Schrader 1984, "A comparison of methods for studentizing the sample median", Commun.
            Stat. Simul. Comput. 13(6), 751-773; the estimate of scipy's stde_median in
            scipy/stats/_mstats_basic.py, which has no c >= 1 floor and needs 7 values.)

With a handful of timings the MAD alone is overconfident: four clustered values and one far off
(a CPU config timed 4.40, 4.33, 5.02, 4.32 and 2.29 ms) read as a 1.2% error, while the median of
five such draws can land anywhere in their range. The order-statistics estimate spans the whole
range below 12 timings (c reaches 2 at 12), so one far value keeps a config in the rounds until
`--max-repeat` or enough timings to set it aside. Everything here is recomputed from the rows in
the folder, so a killed adaptive sweep resumes where it stopped.
"""

from __future__ import annotations

import math
import statistics

from bench.sweep import results

TIME_COL = "step_ms_median"
Z995 = 2.5758293035489004  # the standard normal's 0.995 quantile


def median_se_pct(times: list[float]) -> float:
    """Standard error of the median of `times`, in percent of it (inf below 3 values): the
    larger of the MAD and McKean-Schrader estimates (module docstring)."""
    n = len(times)
    if n < 3:
        return math.inf
    med = statistics.median(times)
    mad = statistics.median(abs(t - med) for t in times)
    se_mad = 1.2533 * 1.4826 * mad / math.sqrt(n)
    x = sorted(times)
    c = max(1, round((n + 1) / 2 - Z995 * math.sqrt(n / 4)))
    se_ms = (x[n - c] - x[c - 1]) / (2 * Z995)
    return 100.0 * max(se_mad, se_ms) / med


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
