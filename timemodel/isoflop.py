"""Chinchilla approach 2 (Hoffmann et al. 2022, arXiv:2203.15556, §3.2): iso-compute profiles.

For each group of runs that share a budget (an iso-FLOP group, or an iso-time group: one sweep
budget in minutes), find the minimum of log L against log N as N*(C); likewise against log D for
D*(C). Then fit the power laws N* = k_N C^a and D* = k_D C^b by least squares in log-log.

Per-group optimum, two methods:
  akima     (default) Porian et al. 2024's step (arXiv:2406.19146; formll/resolving-scaling-law-
            discrepancies `analysis.py`): an Akima spline of log L against log N (several runs of
            one N: the lowest loss) evaluated on (runs - 1) x 25 log-spaced points, argmin. On the
            shipped tuned-RefinedWeb points it gives the paper's per-budget optima.
  parabola  Hoffmann et al.'s: a parabola through the runs within a factor `window` of the best N
            (window 0: every run), vertex.
A group whose optimum sits on the edge of its measured range (or whose parabola opens downwards)
is dropped.

Uncertainty. The budgets are the sampling unit of the power-law fit, so the headline 95% CI
resamples whole budgets (their optima) with replacement; the CI from resampling runs inside
every group is reported beside it (it leaves out the scatter between budgets and is narrower).
The window setting of the parabola moves the exponent; `window_sensitivity` refits with several.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import Akima1DInterpolator

DEFAULT_WINDOW = 8.0
METHODS = ("akima", "parabola")
WINDOWS = (2.0, 4.0, 8.0, 16.0, 0.0)


def akima_min(x: np.ndarray, logL: np.ndarray):
    """(x*, log L at x*) of an Akima spline through the lowest loss at each distinct x (Porian et
    al.'s `minimize_with_interp`); None with < 3 distinct x or an edge argmin."""
    ux = np.unique(x)
    if len(ux) < 3:
        return None
    uy = np.array([logL[x == v].min() for v in ux])
    grid = np.linspace(ux[0], ux[-1], (len(ux) - 1) * 25)
    f = Akima1DInterpolator(ux, uy)(grid)
    i = int(np.argmin(f))
    if i == 0 or i == len(grid) - 1:
        return None
    return float(grid[i]), float(f[i])


def group_curve(N: np.ndarray, L: np.ndarray, method: str, window: float = DEFAULT_WINDOW):
    """(N grid, L on it) of the curve whose minimum is the group's optimum: the Akima spline of
    log L against log N, or the fitted parabola; None where that method finds none."""
    x, logL = np.log(N), np.log(L)
    if method == "akima":
        ux = np.unique(x)
        if len(ux) < 3:
            return None
        uy = np.array([logL[x == v].min() for v in ux])
        grid = np.linspace(ux[0], ux[-1], 200)
        return np.exp(grid), np.exp(Akima1DInterpolator(ux, uy)(grid))
    got = vertex(x, logL, window)
    if got is None:
        return None
    if window and window > 1:  # drawn over the runs it was fitted to (vertex's window)
        keep = np.abs(x - x[np.argmin(logL)]) <= np.log(window)
        x = x[keep] if len(np.unique(x[keep])) >= 3 else x
    grid = np.linspace(x.min(), x.max(), 200)
    return np.exp(grid), np.exp(np.polyval(got[1], grid))


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


def _group_min(x, logL, window: float, method: str):
    if method == "akima":
        return akima_min(x, logL)
    v = vertex(x, logL, window)
    return None if v is None else (v[0], float(np.polyval(v[1], v[0])))


def optima(C, N, D, L, window: float = DEFAULT_WINDOW, method: str = "akima") -> list[dict]:
    """One row per group: its budget, N*, D*, the loss at N*, and whether it was kept."""
    rows = []
    for c in np.unique(C):
        m = C == c
        logL = np.log(L[m])
        vn = _group_min(np.log(N[m]), logL, window, method)
        vd = _group_min(np.log(D[m]), logL, window, method)
        row = {"C": float(c), "runs": int(m.sum()), "kept": vn is not None and vd is not None}
        if row["kept"]:
            row |= {
                "N_opt": float(np.exp(vn[0])),
                "D_opt": float(np.exp(vd[0])),
                "L_opt": float(np.exp(vn[1])),
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
    C,
    N,
    D,
    L,
    *,
    window: float = DEFAULT_WINDOW,
    bootstrap: int = 200,
    seed: int = 0,
    method: str = "akima",
    sensitivity: bool = True,
) -> dict:
    """Approach 2: per-group optima, the power laws N* ~ C^a, D* ~ C^b, 95% CIs from resampling
    whole budgets (headline) and runs within budgets, and the exponent under other methods and
    windows."""
    C, N, D, L = (np.asarray(v, dtype=float) for v in (C, N, D, L))
    rows = optima(C, N, D, L, window, method)
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
        "method": method,
        "window": window if method == "parabola" else None,
        "bootstrap": int(bootstrap),
    }
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        budgets = _budget_bootstrap(rows, bootstrap, rng)
        runs = _bootstrap(C, N, D, L, window, bootstrap, rng, method)
        for name, draws in (("", budgets), ("_runs", runs)):
            if len(draws) >= max(10, bootstrap // 2):
                res[f"a_ci95{name}"] = [float(np.percentile(draws[:, 0], q)) for q in (2.5, 97.5)]
                res[f"b_ci95{name}"] = [float(np.percentile(draws[:, 1], q)) for q in (2.5, 97.5)]
            res[f"bootstrap_valid{name}"] = int(len(draws))
    if sensitivity:
        res["sensitivity"] = window_sensitivity(C, N, D, L)
    return res


def window_sensitivity(C, N, D, L) -> list[dict]:
    """a and b (and groups kept) under akima and the parabola at each of WINDOWS."""
    out = []
    for method, w in [("akima", None)] + [("parabola", w) for w in WINDOWS]:
        fit = _exponents(optima(C, N, D, L, w or 0.0, method))
        out.append({"method": method, "window": w,
                    "a": None if fit is None else fit[0],
                    "b": None if fit is None else fit[2]})  # fmt: skip
    return out


def _budget_bootstrap(rows: list[dict], n_boot: int, rng) -> np.ndarray:
    """(a, b) of power-law refits on the kept budgets resampled with replacement."""
    kept = [r for r in rows if r["kept"]]
    out = []
    for _ in range(n_boot):
        pick = [kept[i] for i in rng.integers(0, len(kept), len(kept))]
        fit = _exponents(pick)
        if fit is not None:
            out.append((fit[0], fit[2]))
    return np.array(out).reshape(-1, 2)


def _bootstrap(C, N, D, L, window, n_boot, rng, method="akima") -> np.ndarray:
    """(a, b) of refits on runs resampled with replacement in each group; failed draws dropped."""
    idx_by_group = [np.flatnonzero(C == c) for c in np.unique(C)]
    out = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in idx_by_group])
        fit = _exponents(optima(C[idx], N[idx], D[idx], L[idx], window, method))
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
    how = (
        "Akima spline argmin"
        if res.get("method") == "akima"
        else (f"parabola vertex, window {res.get('window')}")
    )
    lines.append(f"per-budget optimum: {how}")
    for k, name, coef in (("a", "N*", "k_N"), ("b", "D*", "k_D")):
        ci, cir = res.get(f"{k}_ci95"), res.get(f"{k}_ci95_runs")
        ci_s = (
            f" (95% CI {ci[0]:.3f}..{ci[1]:.3f} resampling whole budgets, "
            f"{res['bootstrap_valid']} refits"
            + (f"; {cir[0]:.3f}..{cir[1]:.3f} resampling runs within budgets" if cir else "")
            + ")"
            if ci
            else ""
        )
        lines.append(f"{name} = {res[coef]:.4g} * {group_col}^{res[k]:.4f}{ci_s}")
    sens = res.get("sensitivity")
    if sens:
        parts = [
            f"{s['method']}{'' if s['window'] is None else ' w' + format(s['window'], 'g')}: "
            + ("none" if s["a"] is None else f"{s['a']:.3f}")
            for s in sens
        ]
        vals = [s["a"] for s in sens if s["a"] is not None]
        lines.append(
            "a under other settings (w = parabola window, 0 = every run): "
            + ", ".join(parts)
            + (f"; spread {max(vals) - min(vals):.3f}" if vals else "")
        )
    return lines
