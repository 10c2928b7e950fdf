"""`train --plot RUN_DIR`: loss and LR against step for a run and its cooldown branches.

The loss panel draws the training loss (faint raw, plus a running mean), the validation loss of
the raw weights and of the averaged weights (SWA window, EMA) that the eval records carry as
`val_loss_swa`, `val_loss_ema`, `val_loss_swa_k<k>`. Cooldown branches (sub-folders with their own
metrics.jsonl) are drawn in order of their branch step, numbered in the legend. The loss axis can be
logarithmic; its range leaves out the first steps' loss so that small cooldown gains stay visible.
"""

from __future__ import annotations

import math
import os

from core import UserError
from core.files import jsonl_records, warn_line

# Line styles of the validation curves, by weight set: (suffix of val_loss, label, marker, style).
VAL_STYLES = (
    ("", "val", "o", "-"),
    ("_swa", "val SWA", "s", "--"),
    ("_ema", "val EMA", "^", ":"),
)
SKIP_FRACTION = 0.1  # the loss range ignores the first 10% of the steps (the initial drop)


def _record_problem(rec) -> str | None:
    if not isinstance(rec, dict) or "step" not in rec:
        return "record has no 'step'; is it a train metrics file?"
    step = rec["step"]
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
        return f"step must be an integer, got {step!r}"
    if step != int(step) or step < 0:
        return f"step must be an integer >= 0, got {step!r}"
    return None


def read_metrics(run_dir: str) -> tuple[dict[int, dict], dict[int, dict]]:
    """(train records by step, eval records by step); later lines win (resumes rewrite steps).

    A line that is no record (garbage, a cut line, a NaN step) is skipped with one warning line;
    a file with lines but no record at all is an error."""
    path = os.path.join(run_dir, "metrics.jsonl")
    recs, skipped, first = jsonl_records(path, nofollow=True, check=_record_problem)
    if skipped and not recs:
        raise UserError(f"{path} {first}")
    if skipped:
        warn_line(f"{path}: skipped {skipped} unreadable record(s) (first: {first})")
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for rec in recs:
        (evals if rec.get("kind") == "eval" else train)[int(rec["step"])] = rec
    return train, evals


def _num(v) -> bool:
    """A value that can be drawn: a finite number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def find_runs(run_dir: str) -> list[str]:
    """RUN_DIR, then every subfolder (any depth) holding a metrics.jsonl, in folder order."""
    runs = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        dirnames.sort()
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        if "metrics.jsonl" in filenames:
            runs.append(dirpath)
    return runs


def _ordered(run_dir: str) -> list[tuple[str, str, dict, dict]]:
    """(folder, label, train, evals) per run: the main run, then branches by (first, last) step."""
    runs = []
    for d in find_runs(run_dir):
        train, evals = read_metrics(d)
        steps = sorted(set(train) | set(evals))
        if steps:
            runs.append((d, train, evals, steps[0], steps[-1]))
    top = os.path.abspath(run_dir)
    main = [r for r in runs if os.path.abspath(r[0]) == top]
    branches = sorted(
        (r for r in runs if os.path.abspath(r[0]) != top), key=lambda r: r[3:] + r[:1]
    )
    out = [(d, "main run", train, evals) for d, train, evals, _, _ in main]
    for i, (d, train, evals, first, last) in enumerate(branches, 1):
        name = os.path.relpath(d, run_dir)
        out.append((d, f"{i}: {name} (steps {first - 1}-{last})", train, evals))
    return out


def running_mean(xs: list[float], span: int) -> list[float]:
    """Exponential running mean with a horizon of about `span` points (bias-corrected start)."""
    if span <= 1:
        return list(xs)
    a = 2.0 / (span + 1)
    out, m, w = [], 0.0, 0.0
    for x in xs:
        m = (1 - a) * m + a * x
        w = (1 - a) * w + a
        out.append(m / w)
    return out


def _val_series(evals: dict[int, dict]) -> list[tuple[str, str, str, list, list]]:
    """(label, marker, style, steps, values) per weight set present in the eval records."""
    keys = sorted({k for r in evals.values() for k in r if k.startswith("val_loss")})
    known = {"val_loss" + suffix: (lab, mk, ls) for suffix, lab, mk, ls in VAL_STYLES}
    out = []
    for key in keys:
        lab, mk, ls = known.get(key, (f"val {key[9:].replace('_', ' ')}", "d", "-."))
        pts = [(s, r[key]) for s, r in sorted(evals.items()) if _num(r.get(key))]
        if pts:
            out.append((lab, mk, ls, [p[0] for p in pts], [p[1] for p in pts]))
    return out


def wall_clock(train: dict[int, dict], offset: float = 0.0) -> dict[int, float]:
    """Seconds of wall clock at each train step: the run's `time_s` (since its process started,
    evaluations and checkpoints included), else the sum of step times; plus `offset`."""
    out, total = {}, 0.0
    for s in sorted(train):
        r = train[s]
        if _num(r.get("step_ms")):
            total += r["step_ms"] / 1e3
        out[s] = offset + (r["time_s"] if _num(r.get("time_s")) else total)
    return out


def _draw_time(ax, color, train, evals, span, clocks: dict[int, float]) -> None:
    """Loss against wall-clock minutes. A branch starts where its parent's clock stood at its
    first step (`clocks` holds the steps drawn so far)."""
    first = min(train) if train else None
    offset = clocks.get(first - 1, 0.0) if first is not None else 0.0
    t = wall_clock(train, offset)
    pts = [(t[s], train[s]["loss"]) for s in sorted(train) if _num(train[s].get("loss"))]
    if pts:
        ax.plot([p[0] / 60 for p in pts], running_mean([p[1] for p in pts], span), color=color)
    ev = [(s, r) for s, r in sorted(evals.items()) if _num(r.get("val_loss"))]
    xs = [offset + r["time_s"] if _num(r.get("time_s")) else t.get(s) for s, r in ev]
    pts = [(x, r["val_loss"]) for x, (_, r) in zip(xs, ev) if x is not None]
    if pts:
        ax.plot([p[0] / 60 for p in pts], [p[1] for p in pts], color=color, marker="o", ms=3.5)
    for s, x in t.items():
        clocks.setdefault(s, x)


def _colors(n: int) -> list:
    """Black for the main run, then tab10 colours in branch order (numbered in the legends)."""
    return ["black"] + [f"C{i % 10}" for i in range(n - 1)]


def _loss_range(values: list[tuple[list, list]], last_step: int) -> tuple[float, float] | None:
    """(low, high) over the points past the first SKIP_FRACTION of the steps."""
    cut = SKIP_FRACTION * last_step
    ys = [y for steps, vals in values for s, y in zip(steps, vals) if s >= cut and math.isfinite(y)]
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * abs(hi) or 0.1
    return lo - pad, hi + pad


def _draw_run(axes, color, label, train, evals, span, ranges) -> None:
    """One run's curves; `ranges` collects (steps, values) of the raw-weight curves, which set
    the loss axis range (averaged weights lag early on and may leave it at the top)."""
    ax_loss, ax_lr = axes
    steps = sorted(train)
    pts = [(s, train[s]["loss"]) for s in steps if _num(train[s].get("loss"))]
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        smooth = running_mean(ys, span)
        ax_loss.plot(xs, ys, color=color, alpha=0.2, lw=0.6)
        ax_loss.plot(xs, smooth, color=color, lw=1.0)
        ranges.append((xs, smooth))
    lrs = [(s, train[s]["lr"]) for s in steps if _num(train[s].get("lr"))]
    if lrs:
        ax_lr.plot([p[0] for p in lrs], [p[1] for p in lrs], color=color, lw=1.2, label=label)
    for lab, mk, ls, xs, ys in _val_series(evals):
        ax_loss.plot(xs, ys, color=color, marker=mk, ls=ls, ms=3.5, lw=1.2)
        if lab == "val":
            ranges.append((xs, ys))


def _legends(ax_loss, runs, colors, styles_seen) -> None:
    """Two legends right of the loss panel: what each line style is, and which run is which."""
    from matplotlib.lines import Line2D

    style = [Line2D([], [], color="gray", alpha=0.4, lw=0.6, label="train (raw)")]
    style.append(Line2D([], [], color="gray", lw=1.0, label="train (running mean)"))
    for lab, mk, ls in styles_seen:
        style.append(Line2D([], [], color="gray", marker=mk, ls=ls, ms=3.5, label=lab))
    kw = {"fontsize": 7, "title_fontsize": 7, "loc": "upper left"}
    first = ax_loss.legend(handles=style, title="curve", bbox_to_anchor=(1.01, 1.0), **kw)
    ax_loss.add_artist(first)
    handles = [Line2D([], [], color=c, lw=2, label=r[1]) for r, c in zip(runs, colors)]
    ax_loss.legend(handles=handles, title="run", bbox_to_anchor=(1.01, 0.45), **kw)


def _log_axis(ax) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_yscale("log")
    # Loss spans less than a decade: label 1-1.5-2-3-5-7 steps, not just powers of ten.
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0)))
    ax.yaxis.set_minor_locator(LogLocator(subs="all"))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def build_figure(run_dir: str, *, log_loss: bool = False):
    """The matplotlib Figure of `plot_run` (two panels: loss, learning rate)."""
    if not os.path.lexists(os.path.join(run_dir, "metrics.jsonl")):
        raise UserError(f"no metrics.jsonl in {run_dir}; pass a train --out folder")
    runs = _ordered(run_dir)
    if not runs:
        raise UserError(f"{run_dir}/metrics.jsonl has no records yet")
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10.5, 9.5))
    grid = fig.add_gridspec(3, 1, height_ratios=[2.2, 1, 1.6])
    ax_loss = fig.add_subplot(grid[0])
    ax_lr = fig.add_subplot(grid[1], sharex=ax_loss)
    ax_time = fig.add_subplot(grid[2])
    axes = (ax_loss, ax_lr)
    clocks: dict[int, float] = {}
    colors = _colors(len(runs))
    ranges: list = []
    styles_seen: dict = {}
    last = max(max(list(r[2]) + list(r[3])) for r in runs)
    span = max(1, last // 50)  # running mean over ~2% of the run, the same for every branch
    for (_, label, train, evals), color in zip(runs, colors):
        _draw_run(axes, color, label, train, evals, span, ranges)
        _draw_time(ax_time, color, train, evals, span, clocks)
        for lab, mk, ls, _, _ in _val_series(evals):
            styles_seen.setdefault(lab, (lab, mk, ls))
    _legends(ax_loss, runs, colors, styles_seen.values())
    if log_loss:
        _log_axis(ax_loss)
    rng = _loss_range(ranges, last)
    if rng is not None and (not log_loss or rng[0] > 0):
        ax_loss.set_ylim(*rng)
    ax_loss.set_ylabel("loss (nats/token)" + (", log scale" if log_loss else ""))
    ax_loss.grid(alpha=0.3, which="both" if log_loss else "major")
    name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    n_branch = len(runs) - 1
    extra = f" with {n_branch} cooldown branch{'es' if n_branch != 1 else ''}" if n_branch else ""
    ax_loss.set_title(f"{name}{extra}", fontsize=10)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    ax_time.set_xlabel("wall clock (minutes since the run started; a branch from its parent's)")
    ax_time.set_ylabel("loss (running mean; o val)")
    ax_time.grid(alpha=0.3)
    if rng is not None and (not log_loss or rng[0] > 0):
        ax_time.set_ylim(*rng)
    if log_loss:
        _log_axis(ax_time)
    if ax_lr.lines:
        ax_lr.legend(
            fontsize=7, title="run", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0)
        )
    fig.tight_layout()
    return fig


def plot_run(run_dir: str, out: str | None = None, *, log_loss: bool = False) -> str:
    """Write RUN_DIR/plot.png (or `out`); returns its path."""
    import matplotlib.pyplot as plt
    from matplotlib.legend import Legend

    from core import atomic_write

    fig = build_figure(run_dir, log_loss=log_loss)
    out = out or os.path.join(run_dir, "plot.png")
    # Legends sit right of the axes; "tight" must be told about every one of them, not just the
    # last legend of each axes, or the others get cut off.
    legends = [c for ax in fig.axes for c in ax.get_children() if isinstance(c, Legend)]

    def write(fh) -> None:
        fig.savefig(fh, dpi=110, format="png", bbox_inches="tight", bbox_extra_artists=legends)

    try:
        atomic_write(out, write)
    finally:
        plt.close(fig)
    return out
