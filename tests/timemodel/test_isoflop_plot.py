"""`timemodel fit-isoflop --plot` draws, for each budget, the curve whose minimum is its N*."""

from __future__ import annotations

import numpy as np
import pytest

from timemodel import isoflop


@pytest.mark.parametrize("method,window", [("akima", None), ("parabola", 4.0)])
def test_each_group_curve_has_its_minimum_at_the_group_optimum(method, window):
    N = np.geomspace(1e7, 1e9, 9)
    L = 3.0 + 0.2 * (np.log(N) - np.log(8e7)) ** 2  # a true minimum at 8e7
    xs, ys = isoflop.group_curve(N, L, method, window or 0)
    n_star = xs[np.argmin(ys)]
    assert n_star == pytest.approx(8e7, rel=0.15)
    if method == "parabola":  # drawn over the runs inside the window only
        assert xs.min() >= 8e7 / 4.5 and xs.max() <= 8e7 * 4.5
    assert isoflop.group_curve(N[:2], L[:2], method, window or 0) is None


def test_the_plot_has_one_curve_per_budget(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from timemodel import plots

    C = np.repeat([1e17, 1e18], 7)
    N = np.tile(np.geomspace(1e7, 1e9, 7), 2)
    L = 3.0 + 0.2 * (np.log(N) - np.log(np.where(C > 5e17, 2e8, 5e7))) ** 2
    D = C / (6 * N)
    res = isoflop.fit_isoflop(C, N, D, L)
    captured = []
    real = plt.subplots

    def spy(*a, **k):
        fig, axes = real(*a, **k)
        captured.append(axes)
        return fig, axes

    plt.subplots = spy
    try:
        plots.isoflop_plot(str(tmp_path / "iso.png"), res, C, N, D, L, "flops")
    finally:
        plt.subplots = real
    assert len(captured[0][0].lines) == 2 and (tmp_path / "iso.png").stat().st_size > 1000


def test_fit_plot_labels_only_1_2_5_ticks_so_labels_never_overlap(tmp_path):
    """Under a decade of step times, matplotlib labelled every minor tick (3x10^0 4x10^0 ...)."""
    from matplotlib import pyplot as plt

    from timemodel import plots

    y = np.array([0.003, 0.0045, 0.006, 0.009, 0.012, 0.018])  # seconds: 3-18 ms
    res = {"_held_out_pred": y * 1.05, "folds": 4, "family": "linear", "feature_set": "x",
           "features": ["bytes"]}  # fmt: skip
    captured, real = [], plt.subplots
    plt.subplots = lambda *a, **k: captured.append(real(*a, **k)) or captured[-1]
    try:
        plots.fit_plot(str(tmp_path / "fit.png"), res, y, np.ones(6), "batch_size")
    finally:
        plt.subplots = real
    ax = captured[0][1]
    for axis in (ax.xaxis, ax.yaxis):
        labels = [t.get_text() for t in axis.get_ticklabels(minor=True)]
        assert not any(labels), labels
        major = {t.get_text() for t in axis.get_ticklabels()} - {""}
        assert major <= {"1", "2", "5", "10", "20", "50"}, major
