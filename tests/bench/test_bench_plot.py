"""`bench plot`: step-time scatters coloured by a column with a fitted line each, readable ms ticks,
loss_vs_time with a legend or a colour scale. (Named apart from tests/train/test_plot.py: pytest's
default import mode needs unique test-module basenames.)"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pandas as pd
import pytest

from bench.sweep.plot import (
    color_groups,
    config_labels,
    fit_line,
    fmt_eng,
    fmt_ms,
    fmt_num,
    log_ticks,
    loss_figure,
    plot_dir,
    plot_frame,
    step_time_figure,
)
from core import UserError

PNGS = [
    "step_ms_vs_params.png",
    "step_ms_vs_flops_per_step.png",
    "step_ms_vs_memory_traffic.png",
    "tokens_per_s.png",
    "loss_vs_time.png",
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def frame(sizes=(1e5, 3e5, 1e6, 3e6, 1e7, 3e7), batches=(4, 8, 16), layers=(2,)) -> pd.DataFrame:
    rows = []
    for i, (p, b, n_layer) in enumerate(itertools.product(sizes, batches, layers)):
        ms = 2.0 + 1e-5 * p * b / 4  # exactly linear in params for each batch size
        curve = [[0.1 * t, 2.0 + 3.0 * np.exp(-t * (1 + i) / 60)] for t in range(40)]
        rows.append(
            {
                "config_id": f"c{i}",
                "status": "ok",
                "n_layer": n_layer,
                "n_embd": 64,
                "batch_size": b,
                "acc_steps": 1,
                "params": p,
                "flops_per_step": 6 * p * b * 64,
                "memory_traffic": 20 * p + 1e5 * b,
                "step_ms_median": ms,
                "step_ms_mean": ms * (1 + 0.001 * i),
                "tokens_per_s": b * 64 / ms * 1e3,
                "loss_curve": json.dumps(curve),
            }
        )
    return pd.DataFrame(rows)


def _labels_do_not_overlap(fig, axis) -> list[str]:
    fig.canvas.draw()
    lo, hi = axis.get_view_interval()
    ticks = [
        t
        for t, v in zip(axis.get_ticklabels(), axis.get_ticklocs())
        if t.get_text() and min(lo, hi) <= v <= max(lo, hi)
    ]
    boxes = [t.get_window_extent() for t in ticks]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), [t.get_text() for t in ticks]
    return [t.get_text() for t in ticks]


def test_fit_line_recovers_a_plus_bx():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    a, b, r2 = fit_line(x, 3.0 + 0.5 * x)
    assert (a, b, r2) == (pytest.approx(3.0), pytest.approx(0.5), pytest.approx(1.0))
    a, b, _ = fit_line(x, -1.0 + 2.0 * x)  # a negative intercept is refit through the origin
    assert a == 0.0 and b > 0
    assert fit_line(np.array([1.0, 1.0]), np.array([2.0, 3.0])) is None
    # two points (or three): no line is drawn; it said R² 0.84, n 2 and missed both points
    assert fit_line(np.array([1.0, 2.0]), np.array([5.0, 1.0])) is None
    assert fit_line(np.array([1.0, 2.0, 3.0, 3.0]), np.array([5.0, 1.0, 2.0, 2.0])) is None


def test_step_time_scatter_coloured_by_batch_with_a_fit_each():
    df = frame()
    fig = step_time_figure(df, "params", "batch_size")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    for b in (4, 8, 16):
        assert f"batch_size = {b}" in texts
    fits = [t for t in texts if t.startswith("fit ")]
    assert len(fits) == 3 and all("R² 1.00, n 6" in t for t in fits)
    assert "fit 2 ms + 10 ms/M params (R² 1.00, n 6)" in fits  # batch 4: 2 ms + 1e-5 ms/param
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 3 and len({ln.get_color() for ln in dashed}) == 3
    ylabels = _labels_do_not_overlap(fig, ax.yaxis)
    assert ylabels and all(t.endswith((" ms", " s")) for t in ylabels)
    xlabels = _labels_do_not_overlap(fig, ax.xaxis)
    assert {"100k", "1M", "10M"} <= set(xlabels)


def test_many_values_get_a_colour_scale_and_one_fit():
    df = frame()
    fig = step_time_figure(df, "flops_per_step", "step_ms_mean")  # 18 distinct values
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "step_ms_mean"  # colour bar
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(texts) == 1 and texts[0].startswith("fit ") and "n 18" in texts[0]
    kind, groups = color_groups(df.assign(x=[None] * 9 + ["a"] * 9), "x")
    assert kind == "discrete" and [g[0] for g in groups] == ["a", "n/a"]  # rows without a value


@pytest.mark.parametrize("lo, hi", [(50.0, 80.0), (0.2, 30.0), (1e3, 1e12)])
def test_log_tick_labels_never_pile_up(lo, hi):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([lo, hi], [lo, hi])
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis, lo, hi, fmt_eng)
    log_ticks(ax.yaxis, lo, hi, fmt_ms)
    assert len(_labels_do_not_overlap(fig, ax.xaxis)) >= 2
    assert len(_labels_do_not_overlap(fig, ax.yaxis)) >= 2


def test_tick_formats():
    assert [fmt_ms(v) for v in (0.5, 20.0, 1500.0)] == ["0.5 ms", "20 ms", "1.5 s"]
    assert [fmt_eng(v) for v in (999.0, 2e6, 3.5e9, 1.2345e5)] == ["999", "2M", "3.5G", "123k"]
    assert [fmt_num(v) for v in (1.234, 999.9, 2e3, 0.0001234)] == [
        "1.23",
        "1000",
        "2000",
        "0.000123",
    ]


def test_loss_vs_time_legend_then_colour_scale():
    few = frame(sizes=(1e5,), batches=(4, 8), layers=(1, 2))
    fig = loss_figure(few)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["L1 b4", "L2 b4", "L1 b8", "L2 b8"]
    many = frame()  # 18 curves
    fig = loss_figure(many, "step_ms_mean")  # 18 distinct values
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "step_ms_mean"
    assert fig.axes[0].get_legend() is None and len(fig.axes[0].get_lines()) == 18
    fig = loss_figure(many, "batch_size")  # few distinct values: one legend entry per value
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["batch_size = 4", "batch_size = 8", "batch_size = 16"]


def test_plot_dir_passes_both_colour_columns(tmp_path, monkeypatch):
    import bench.sweep.plot
    from bench.sweep.results import append_row

    for row in frame(sizes=(1e5,), batches=(4,)).to_dict("records"):
        append_row(str(tmp_path), row)
    seen = {}
    monkeypatch.setattr(bench.sweep.plot, "plot_frame", lambda df, d, **kw: seen.update(kw) or [])
    plot_dir(str(tmp_path), color_by="n_layer", loss_color_by="batch_size")
    assert seen == {"color_by": "n_layer", "loss_color_by": "batch_size"}


def test_config_labels_name_only_what_differs():
    df = frame(sizes=(1e5,), batches=(4,), layers=(1, 2))
    assert config_labels(df) == ["L1", "L2"]
    assert config_labels(df.iloc[:1]) == ["c0"]


def test_plot_dir_writes_every_png_from_results(tmp_path):
    from bench.sweep.results import append_row

    df = frame()
    for row in df.to_dict("records"):
        append_row(str(tmp_path), row)
    append_row(str(tmp_path), {**row, "config_id": "bad", "status": "error", "params": 5e9})
    paths = plot_dir(str(tmp_path), str(tmp_path / "png"))
    assert [os.path.basename(p) for p in paths] == PNGS
    import matplotlib.image

    for p in paths:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(p)[..., :3]  # nothing cut off at the right edge
        assert (img[:, -2:] > 0.99).all(), p
    with pytest.raises(UserError, match="unknown colour column 'nope'"):
        plot_frame(df, str(tmp_path / "x"), color_by="nope")
    with pytest.raises(UserError, match="unknown colour column 'nope'"):  # what `bench plot
        plot_dir(str(tmp_path), str(tmp_path / "x"), color_by="nope")  # --color-by COL` calls
    with pytest.raises(UserError, match="no ok rows"):
        plot_frame(df.assign(status="error"), str(tmp_path / "x"))
