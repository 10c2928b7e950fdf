"""`bench plot DIR`: PNGs of a sweep's results.

- step_ms_vs_{params,flops_per_step,memory_traffic}.png: median step time against each cost
  feature on log-log axes, coloured by a column (batch size by default; a colour scale when the
  column has many values), with a least-squares line `t = a + b*x` per colour (one line in all
  for a colour scale), its fit in the legend.
- tokens_per_s.png: throughput against parameters, same colouring.
- loss_vs_time.png: each config's training-loss curve against timed wall time; a legend that
  names the configs by the settings that differ, or a colour scale by parameters for many lines.
Only status-ok rows are drawn.
"""

from __future__ import annotations

import math
import os

import numpy as np

from core import UserError
from core.files import atomic_write, decode_json, warn_line

MAX_LEGEND_GROUPS = 10  # more distinct values (or lines) than this get a colour scale
# Columns that tell configs apart in the loss_vs_time legend (only the ones that vary are shown).
CONFIG_COLUMNS = (
    "n_layer",
    "n_embd",
    "n_head",
    "sequence_length",
    "batch_size",
    "acc_steps",
    "lr",
    "dtype",
    "kernels",
    "compile",
)
SHORT = {"n_layer": "L", "n_embd": "d", "n_head": "h", "sequence_length": "T", "batch_size": "b"}
# x column -> (axis label, unit of the fitted slope, that unit's size)
FEATURES = {
    "params": ("parameters", "M params", 1e6),
    "flops_per_step": ("training FLOPs per step", "GFLOP", 1e9),
    "memory_traffic": ("memory traffic per step (bytes)", "GB", 1e9),
}


def fmt_ms(v: float, _pos=None) -> str:
    """Tick label of a time in milliseconds: "0.5 ms", "20 ms", "1.5 s"."""
    if v >= 1000:
        return f"{v / 1000:g} s"
    return f"{v:g} ms"


def fmt_eng(v: float, _pos=None) -> str:
    """Tick label with an SI prefix: 2e6 -> "2M", 5e9 -> "5G"."""
    for exp, prefix in ((15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(v) >= 10**exp:
            return f"{v / 10**exp:.3g}{prefix}"
    return f"{v:g}"


def fmt_num(v: float) -> str:
    """Three significant digits without exponents in the usual range: 1500.0 -> "1500"."""
    if 999.5 <= abs(v) < 1e7:  # .3g would switch to an exponent here
        return f"{v:.0f}"
    return f"{v:.3g}"


def fmt_value(v) -> str:
    """A colour group's value in a legend: large numbers with an SI prefix."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) >= 1e4:
        return fmt_eng(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def log_ticks(axis, lo: float, hi: float, fmt) -> None:
    """Major ticks at 1-2-5 (or 1-10-100 over many decades) with `fmt` labels; no minor labels,
    so labels never pile up on narrow or wide ranges."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    if decades <= 0.8:
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
    elif decades <= 2.2:
        subs = (1.0, 2.0, 5.0)
    elif decades <= 4.5:
        subs = (1.0, 3.0)
    else:
        subs = (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_locator(LogLocator(base=10, subs="all"))
    axis.set_minor_formatter(NullFormatter())


MIN_FIT_POINTS = 4  # distinct x values: two coefficients and two points left to judge them by


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Least squares y = a + b*x with a, b >= 0 (a fixed cost plus a cost per unit): (a, b, R²).
    None with fewer than MIN_FIT_POINTS distinct x: a line through two points says nothing (and
    the constrained refit can miss both)."""
    if len(np.unique(x)) < MIN_FIT_POINTS:
        return None
    design = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    if a < 0:  # a negative fixed cost is unphysical: refit through the origin
        a, b = 0.0, float(x @ y / (x @ x))
    b = max(b, 0.0)
    resid = y - (a + b * x)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else 1.0
    return float(a), float(b), r2


def color_groups(df, col: str):
    """("discrete", [(value, color, row mask)]) for <= MAX_LEGEND_GROUPS values, else
    ("scale", (colors per row, ScalarMappable)) for a numeric column."""
    import matplotlib
    from matplotlib.colors import LogNorm, Normalize

    if col not in df.columns:
        raise UserError(f"unknown colour column {col!r}; choose one of: {', '.join(df.columns)}")
    vals = df[col]
    uniq = sorted(vals.dropna().unique().tolist(), key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in uniq)
    if len(uniq) <= MAX_LEGEND_GROUPS or not numeric:
        if numeric and len(uniq) > 2:  # ordered values: a sequential map shows the order
            seq = matplotlib.colormaps["viridis"]
            colors = [seq(0.9 * i / (len(uniq) - 1)) for i in range(len(uniq))]
        else:
            cmap = matplotlib.colormaps["tab10" if len(uniq) <= 10 else "tab20"]
            colors = [cmap(i % cmap.N) for i in range(len(uniq))]
        groups = [(v, c, (vals == v).to_numpy()) for v, c in zip(uniq, colors)]
        if vals.isna().any():  # rows without a value still get drawn, in gray
            groups.append(("n/a", "gray", vals.isna().to_numpy()))
        return "discrete", groups
    lo, hi = float(min(uniq)), float(max(uniq))
    norm = LogNorm(lo, hi) if lo > 0 and hi / lo > 20 else Normalize(lo, hi)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgray")  # NaN rows: gray
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    return "scale", (sm.to_rgba(vals.to_numpy(dtype=float)), sm)


def _colorbar(fig, ax, sm, label: str) -> None:
    """A colour bar labelled like the axes: plain numbers with SI prefixes, not 10^k."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    cb = fig.colorbar(sm, ax=ax, label=label)
    cb.ax.yaxis.set_major_formatter(FuncFormatter(fmt_eng))
    cb.ax.yaxis.set_minor_formatter(NullFormatter())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on sweep machines
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


def _fit_label(fit, unit: str, scale: float, n: int) -> str:
    a, b, r2 = fit
    return f"{fmt_num(a)} ms + {fmt_num(b * scale)} ms/{unit} (R² {r2:.2f}, n {n})"


def _scatter_fit(ax, df, x: str, y: str, color_by: str, fit_unit: tuple[str, float] | None):
    """Scatter of y against x coloured by `color_by`, a fitted line per colour; returns the
    colour bar mappable (None for a legend)."""
    kind, groups = color_groups(df, color_by)
    xs_all, ys_all = df[x].to_numpy(dtype=float), df[y].to_numpy(dtype=float)
    if kind == "scale":
        colors, sm = groups
        ax.scatter(xs_all, ys_all, s=18, c=colors, edgecolors="none")
        parts = [(None, "black", np.ones(len(df), bool))]
    else:
        sm, parts = None, groups
    for value, color, mask in parts:
        xs, ys = xs_all[mask], ys_all[mask]
        label = f"{color_by} = {fmt_value(value)}" if value is not None else None
        if kind == "discrete":
            ax.scatter(xs, ys, s=18, color=color, edgecolors="none", label=label)
        fit = fit_line(xs, ys) if fit_unit else None
        if fit is not None:
            grid = np.geomspace(xs.min(), xs.max(), 50)
            fit_lab = "fit " + _fit_label(fit, fit_unit[0], fit_unit[1], len(xs))
            ax.plot(grid, fit[0] + fit[1] * grid, color=color, lw=1.0, ls="--", label=fit_lab)
    return sm


def step_time_figure(df, x: str, color_by: str = "batch_size"):
    """Median step time against cost feature `x` (a FEATURES key), coloured, with fitted lines."""
    plt = _pyplot()
    label, unit, scale = FEATURES[x]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    sm = _scatter_fit(ax, df, x, "step_ms_median", color_by, (unit, scale))
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis, df[x].min(), df[x].max(), fmt_eng)
    log_ticks(ax.yaxis, df["step_ms_median"].min(), df["step_ms_median"].max(), fmt_ms)
    ax.set_xlabel(label)
    ax.set_ylabel("median step time")
    ax.set_title(f"step time vs {label} (n = {len(df)} configs)", fontsize=10)
    ax.grid(alpha=0.3, which="major")
    if sm is not None:
        _colorbar(fig, ax, sm, color_by)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def tokens_figure(df, color_by: str = "batch_size"):
    """Tokens per second against parameters, coloured by `color_by`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    sm = _scatter_fit(ax, df, "params", "tokens_per_s", color_by, None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis, df["params"].min(), df["params"].max(), fmt_eng)
    log_ticks(ax.yaxis, df["tokens_per_s"].min(), df["tokens_per_s"].max(), fmt_eng)
    ax.set_xlabel("parameters")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"throughput (n = {len(df)} configs)", fontsize=10)
    ax.grid(alpha=0.3, which="major")
    if sm is not None:
        _colorbar(fig, ax, sm, color_by)
    else:
        ax.legend(fontsize=7, loc="best")
    return fig


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _curve(v) -> list:
    """[(seconds, loss)] of a row's loss_curve (JSON text or a list), smoothed by a running mean
    over ~1/10 of the points (the per-step loss of small batches is too noisy to compare)."""
    if isinstance(v, str):
        try:
            v = decode_json(v)
        except ValueError:
            return []
    pts = (
        [p for p in v if isinstance(p, (list, tuple)) and len(p) == 2 and all(map(_finite, p))]
        if isinstance(v, list)
        else []
    )
    if not pts:
        return []
    from train.plot import running_mean

    smooth = running_mean([p[1] for p in pts], max(1, len(pts) // 10))
    return [(p[0], y) for p, y in zip(pts, smooth)]


def config_labels(df) -> list[str]:
    """Per row, the settings that differ between rows ("L2 d128 b8 lr=0.001"), else config_id."""
    varying = [c for c in CONFIG_COLUMNS if c in df.columns and df[c].nunique(dropna=False) > 1]
    labels = []
    for i, (_, r) in enumerate(df.iterrows()):
        parts = [
            f"{SHORT[c]}{fmt_value(r[c])}" if c in SHORT else f"{c}={fmt_value(r[c])}"
            for c in varying
        ]
        labels.append(" ".join(parts) or str(r.get("config_id", i)))
    return labels


def loss_figure(df, loss_color_by: str = "params"):
    """Training loss curves against timed wall time: a legend, or a colour scale for many."""
    plt = _pyplot()
    curves = [_curve(v) for v in df.get("loss_curve", [None] * len(df))]
    keep = np.array([bool(c) for c in curves])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if not keep.any():
        ax.text(0.5, 0.5, "no loss curves in these rows", ha="center", transform=ax.transAxes)
        return fig
    sub = df[keep]
    curves = [c for c in curves if c]
    labels = config_labels(sub)
    if len(curves) <= MAX_LEGEND_GROUPS:
        for c, lab in zip(curves, labels):
            ax.plot([p[0] for p in c], [p[1] for p in c], lw=1.0, label=lab)
        ax.legend(fontsize=7, loc="upper right", title="config", title_fontsize=7)
    else:
        kind, groups = color_groups(sub, loss_color_by)
        if kind == "scale":
            colors, sm = groups
            for c, col in zip(curves, colors):
                ax.plot([p[0] for p in c], [p[1] for p in c], lw=0.8, color=col)
            _colorbar(fig, ax, sm, loss_color_by)
        else:
            for value, col, mask in groups:
                for j in np.flatnonzero(mask):
                    c = curves[j]
                    first = j == np.flatnonzero(mask)[0]
                    lab = f"{loss_color_by} = {fmt_value(value)}" if first else None
                    ax.plot([p[0] for p in c], [p[1] for p in c], lw=0.8, color=col, label=lab)
            ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("timed wall time (s)")
    ax.set_ylabel("training loss (running mean)")
    ax.set_title(f"training loss vs wall time ({len(curves)} configs)", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def plot_frame(
    df, png_dir: str, *, color_by: str = "batch_size", loss_color_by: str = "params"
) -> list[str]:
    """Write the PNGs of a results frame into `png_dir`; returns their paths."""
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    need = ["params", "step_ms_median", "tokens_per_s"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(f"results lack column(s) {', '.join(missing)}; is this a bench sweep?")
    df = df[_positive(df["step_ms_median"]) & _positive(df["params"])]  # log axes
    if df.empty:
        raise UserError("no ok rows with a measured step time to plot")
    figures = [
        (f"step_ms_vs_{x}.png", step_time_figure, (df, x, color_by))
        for x in FEATURES
        if x in df.columns and _positive(df[x]).all()
    ]
    df = df[_positive(df["tokens_per_s"])]
    if df.empty:
        raise UserError("no ok rows with a measured throughput to plot")
    figures.append(("tokens_per_s.png", tokens_figure, (df, color_by)))
    figures.append(("loss_vs_time.png", loss_figure, (df, loss_color_by)))
    written = []
    for name, build, args in figures:
        written.append(_save(build(*args), os.path.join(png_dir, name)))
    return written


def numeric_columns(df, where: str):
    """`df` with every column that holds numbers made numeric: text in it (a hand-edited or
    damaged row) becomes missing, with one warning line, instead of failing a comparison."""
    import pandas as pd

    mixed = []
    for c in df.columns:
        if df[c].dtype != object or c == "loss_curve":
            continue
        scalar = df[c].map(lambda v: not isinstance(v, (dict, list)))
        if not scalar.all():  # a list or object where a value belongs
            mixed.append(c)
            df[c] = df[c].where(scalar, None)
        vals = df[c].dropna()
        nums = vals.map(_finite_or_nan)
        if nums.any() and not nums.all() and c not in mixed:
            mixed.append(c)
        if nums.any():
            df[c] = pd.to_numeric(df[c].where(df[c].map(_finite_or_nan)), errors="coerce")
        else:  # a text column: all text, so that sorting and grouping by it work
            df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    if mixed:
        warn_line(f"{where}: text in numeric column(s) {', '.join(mixed)} drawn as missing")
    return df


def _positive(col):
    """Which values of column `col` are finite numbers > 0 (drawable on a log axis)."""
    import pandas as pd

    col = pd.to_numeric(col, errors="coerce")
    return np.isfinite(col) & (col > 0)


def _finite_or_nan(x) -> bool:
    """A number (finite or NaN) that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def plot_dir(
    out_dir: str,
    png_dir: str | None = None,
    *,
    color_by: str = "batch_size",
    loss_color_by: str = "params",
) -> list[str]:
    """Write the PNGs of a sweep folder (into DIR by default); returns their paths."""
    from bench.sweep.show import load_frame

    df = numeric_columns(load_frame(out_dir), out_dir)
    if "status" not in df.columns or not (df["status"] == "ok").any():
        raise UserError(f"no ok rows in {out_dir} to plot")
    return plot_frame(df, png_dir or out_dir, color_by=color_by, loss_color_by=loss_color_by)
