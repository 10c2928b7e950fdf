"""PNG plots of the timemodel commands (matplotlib, Agg backend, imported only when asked)."""

from __future__ import annotations

import numpy as np

from timemodel import isoflop


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    finally:
        _plt().close(fig)


def fit_plot(path: str, res: dict, y: np.ndarray, color: np.ndarray, color_name: str) -> None:
    """Held-out predicted vs measured step time (log-log), coloured by a column, with the feature
    set, held-out R^2, MAPE, worst APE and n in the title."""
    plt = _plt()
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    pred = np.asarray(res["_held_out_pred"]) * 1e3
    meas = np.asarray(y) * 1e3
    fig, ax = plt.subplots(figsize=(6.0, 5.2))
    c = np.asarray(color, dtype=float)
    norm = LogNorm(vmin=c.min(), vmax=c.max()) if c.min() > 0 and c.max() > c.min() else None
    sc = ax.scatter(meas, np.maximum(pred, 1e-3), c=c, cmap="viridis", norm=norm, s=22, zorder=3)
    _colorbar(fig, sc, ax, c, color_name)
    lo, hi = min(meas.min(), pred[pred > 0].min()) / 1.3, max(meas.max(), pred.max()) * 1.3
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="exact")
    for f in (1.1, 0.9):
        ax.plot([lo, hi], [lo * f, hi * f], "k--", lw=0.5)
    ax.plot([], [], "k--", lw=0.5, label="±10%")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
    # Ticks at 1-2-5 of each decade, plain numbers, and no minor labels: matplotlib's default
    # labels minor ticks (3x10^0 4x10^0 ...) when the range is under a decade, and they overlap.
    ms = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ms)
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("measured step time (ms)")
    ax.set_ylabel(f"predicted, held out ({res['folds']}-fold CV) (ms)")
    ss_res, ss_tot = np.sum((meas - pred) ** 2), np.sum((meas - meas.mean()) ** 2)
    r2 = f"{1 - ss_res / ss_tot:.3f}" if ss_tot > 0 else "n/a"
    ape = np.abs(pred - meas) / meas * 100
    what = (
        "physical model (roofline per op class, efficiencies <= 1 of the peaks)"
        if res.get("family") == "physical"
        else f"linear, feature set: {res['feature_set']}\n{'+'.join(res['features'])}"
    )
    ax.set_title(
        f"{what}\nheld out (one {res['folds']}-fold split) R² {r2}   MAPE {ape.mean():.1f}%   "
        f"worst {ape.max():.0f}%   n {len(meas)}",
        fontsize=8,
    )
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def isoflop_plot(path: str, res: dict, C, N, D, L, group_col: str) -> None:
    """Left: loss vs N per group with its parabola and vertex. Right: N*, D* vs the group budget
    with the fitted power laws and their 95% CIs in the legend."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.4))
    groups = np.unique(C)
    cmap = plt.get_cmap("viridis")
    kept = {r["C"]: r for r in res["groups"] if r["kept"]}
    for i, c in enumerate(groups):
        m = C == c
        col = cmap(i / max(1, len(groups) - 1))
        ax.scatter(N[m], L[m], s=10, color=col, label=f"{c:.3g}")
        curve = isoflop.group_curve(
            N[m], L[m], res.get("method", "parabola"), res.get("window") or 0
        )
        if curve is not None:  # the curve whose minimum is the group's N*
            ax.plot(*curve, color=col, lw=0.9, alpha=0.8)
        if c in kept:
            ax.scatter(
                [kept[c]["N_opt"]],
                [kept[c]["L_opt"]],
                marker="*",
                s=80,
                color=col,
                edgecolor="k",
                zorder=4,
            )
    ax.set(xscale="log", yscale="log", xlabel="N (parameters)", ylabel="loss")
    _plain_y(ax)
    ax.legend(title=group_col, fontsize=6, ncol=2, title_fontsize=7)
    ax.set_title(f"runs per group; ★ N* ({res.get('method', 'parabola')})", fontsize=9)
    if res.get("a") is not None:
        cs = np.array(sorted(kept))
        grid = np.geomspace(cs.min(), cs.max(), 50)
        for key, name, k, col in (("N_opt", "N*", "a", "C0"), ("D_opt", "D*", "b", "C1")):
            ci = res.get(f"{k}_ci95")
            lab = f"{name} ∝ {group_col}^{res[k]:.3f}" + (
                f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            )
            coef = res["k_N"] if k == "a" else res["k_D"]
            bx.scatter(cs, [kept[c][key] for c in cs], color=col, s=16)
            bx.plot(grid, coef * grid ** res[k], color=col, label=lab)
        bx.set(xscale="log", yscale="log", xlabel=group_col, ylabel="optimal N* / D*")
        bx.legend(fontsize=7)
    bx.set_title(
        f"approach 2: {res['kept']} of {len(groups)} groups with an interior optimum", fontsize=9
    )
    _save(fig, path)


def budget_text(hours: float) -> str:
    """A wall-clock budget in the unit a reader thinks in: 40 s, 5 min, 2.5 h."""
    s = hours * 3600.0
    return f"{s:.3g} s" if s < 120 else f"{s / 60:.3g} min" if s < 7200 else f"{hours:.3g} h"


def frontier_plot(path: str, scored: dict, order: np.ndarray, hours: float, fx, fy) -> None:
    """Predicted loss vs params of the candidates (a sample), the best-per-size frontier, best."""
    plt = _plt()
    n = len(scored["loss"])
    sub = np.random.default_rng(0).choice(n, size=min(n, 20000), replace=False)
    fig, ax = plt.subplots(figsize=(6, 4))
    sc = ax.scatter(
        scored["params"][sub],
        scored["loss"][sub],
        s=2,
        c=scored["batch_size"][sub],
        cmap="viridis",
        norm=_lognorm(scored["batch_size"]),
    )
    _colorbar(fig, sc, ax, scored["batch_size"], "batch size")
    ax.plot(fx, fy, "C3-", lw=1.5, label="best loss per size")
    best = order[0]
    ax.scatter(
        [scored["params"][best]],
        [scored["loss"][best]],
        marker="*",
        s=120,
        c="C3",
        edgecolor="k",
        zorder=3,
        label="best",
    )
    ax.set(xscale="log", xlabel="params", ylabel=f"predicted loss after {budget_text(hours)}")
    ax.set_ylim(fy.min() - 0.05 * (fy.max() - fy.min() + 1e-9), np.percentile(scored["loss"], 99))
    ax.legend(fontsize=7)
    _save(fig, path)


def _lognorm(v):
    from matplotlib.colors import LogNorm

    v = np.asarray(v, dtype=float)
    return LogNorm(vmin=v.min(), vmax=v.max()) if v.min() > 0 and v.max() > v.min() else None


def _colorbar(fig, mappable, ax, values, label: str) -> None:
    """A colour bar with plain number labels (the distinct values when there are few)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    cb = fig.colorbar(mappable, ax=ax, label=label)
    uniq = np.unique(np.asarray(values, dtype=float))
    if len(uniq) <= 8:
        cb.ax.yaxis.set_major_locator(FixedLocator(uniq))
    cb.ax.yaxis.set_minor_locator(NullLocator())
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _plain_y(ax) -> None:
    """Loss ticks as plain numbers on a log axis (3, 4, 6 rather than 3x10^0)."""
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
