"""Chinchilla approach 2 (Hoffmann et al. 2022, arXiv:2203.15556, §3.2): iso-compute profiles.

For each group of runs that share a budget (an iso-FLOP group, or an iso-time group: one sweep
budget in minutes), fit a parabola to log L against log N and take its vertex as N*(C); likewise
log L against log D gives D*(C). Then fit the power laws N* = k_N C^a and D* = k_D C^b by least
squares in log-log. Confidence intervals come from a bootstrap that resamples the runs inside
every group and repeats the whole procedure.

Two guards, as Porian et al. 2024 (arXiv:2406.19146; formll/resolving-scaling-law-discrepancies,
`analysis.py`) apply them:
a group whose vertex is not inside its measured range (an edge optimum) or whose parabola opens
downwards is dropped; and, by default, only runs within a factor `window` of the group's best N
enter the parabola (a parabola in log N only fits near the minimum; window 0 uses every run).
"""

from __future__ import annotations

import numpy as np

DEFAULT_WINDOW = 8.0


def vertex(x: np.ndarray, logL: np.ndarray, window: float = DEFAULT_WINDOW):
    """(x*, parabola coefficients) of log L = p0 x^2 + p1 x + p2 near the minimum; None if the
    group has < 3 distinct x, opens downwards, or has its vertex outside the fitted x range."""
    if window and window > 1:
        keep = np.abs(x - x[np.argmin(logL)]) <= np.log(window)
        if len(np.unique(x[keep])) >= 3:
            x, logL = x[keep], logL[keep]
    if len(np.unique(x)) < 3:
        return None
    p = np.polyfit(x, logL, 2)
    if p[0] <= 0:
        return None
    xs = -p[1] / (2 * p[0])
    if not (x.min() <= xs <= x.max()):
        return None
    return float(xs), p


def optima(C, N, D, L, window: float = DEFAULT_WINDOW) -> list[dict]:
    """One row per group: its budget, N*, D*, the loss at the N vertex, and whether it was kept."""
    rows = []
    for c in np.unique(C):
        m = C == c
        logL = np.log(L[m])
        vn, vd = vertex(np.log(N[m]), logL, window), vertex(np.log(D[m]), logL, window)
        row = {"C": float(c), "runs": int(m.sum()), "kept": vn is not None and vd is not None}
        if row["kept"]:
            row |= {
                "N_opt": float(np.exp(vn[0])),
                "D_opt": float(np.exp(vd[0])),
                "L_opt": float(np.exp(np.polyval(vn[1], vn[0]))),
            }
        rows.append(row)
    return rows


def power_law(C: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(exponent, coefficient) of y = k C^e by least squares in log-log."""
    e, logk = np.polyfit(np.log(C), np.log(y), 1)
    return float(e), float(np.exp(logk))


def _exponents(rows: list[dict]) -> tuple[float, float, float, float] | None:
    kept = [r for r in rows if r["kept"]]
    if len(kept) < 2 or len({r["C"] for r in kept}) < 2:
        return None
    C = np.array([r["C"] for r in kept])
    a, kn = power_law(C, np.array([r["N_opt"] for r in kept]))
    b, kd = power_law(C, np.array([r["D_opt"] for r in kept]))
    return a, kn, b, kd


def fit_isoflop(
    C, N, D, L, *, window: float = DEFAULT_WINDOW, bootstrap: int = 200, seed: int = 0
) -> dict:
    """Approach 2: per-group optima, the power laws N* ~ C^a, D* ~ C^b, bootstrap 95% CIs."""
    C, N, D, L = (np.asarray(v, dtype=float) for v in (C, N, D, L))
    rows = optima(C, N, D, L, window)
    fit = _exponents(rows)
    if fit is None:
        return {"groups": rows, "a": None, "b": None, "kept": sum(r["kept"] for r in rows)}
    a, kn, b, kd = fit
    res = {
        "groups": rows,
        "a": a,
        "k_N": kn,
        "b": b,
        "k_D": kd,
        "kept": sum(r["kept"] for r in rows),
        "window": window,
        "bootstrap": int(bootstrap),
    }
    if bootstrap > 0:
        draws = _bootstrap(C, N, D, L, window, bootstrap, seed)
        if len(draws) >= max(10, bootstrap // 2):
            res["a_ci95"] = [float(np.percentile(draws[:, 0], q)) for q in (2.5, 97.5)]
            res["b_ci95"] = [float(np.percentile(draws[:, 1], q)) for q in (2.5, 97.5)]
        res["bootstrap_valid"] = int(len(draws))
    return res


def _bootstrap(C, N, D, L, window, n_boot, seed) -> np.ndarray:
    """(a, b) of refits on runs resampled with replacement in each group; failed draws dropped."""
    rng = np.random.default_rng(seed)
    idx_by_group = [np.flatnonzero(C == c) for c in np.unique(C)]
    out = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in idx_by_group])
        fit = _exponents(optima(C[idx], N[idx], D[idx], L[idx], window))
        if fit is not None:
            out.append((fit[0], fit[2]))
    return np.array(out).reshape(-1, 2)


def result_lines(res: dict, group_col: str) -> list[str]:
    lines = [f"{'group ' + group_col:>16s} {'runs':>5s} {'N*':>10s} {'D*':>10s} {'loss*':>8s}"]
    for r in res["groups"]:
        if r["kept"]:
            lines.append(
                f"{r['C']:16.4g} {r['runs']:5d} {r['N_opt']:10.4g} {r['D_opt']:10.4g} "
                f"{r['L_opt']:8.4f}"
            )
        else:
            lines.append(f"{r['C']:16.4g} {r['runs']:5d}   dropped (edge or no minimum)")
    if res["a"] is None:
        lines.append("fewer than 2 groups with an interior optimum: no power law fitted")
        return lines
    for k, name, coef in (("a", "N*", "k_N"), ("b", "D*", "k_D")):
        ci = res.get(f"{k}_ci95")
        ci_s = (
            f" (95% CI {ci[0]:.3f}..{ci[1]:.3f}, {res['bootstrap_valid']} bootstrap refits)"
            if ci
            else ""
        )
        lines.append(f"{name} = {res[coef]:.4g} * {group_col}^{res[k]:.4f}{ci_s}")
    return lines
