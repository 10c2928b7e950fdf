"""`train --plot RUN_DIR`: averaged validation curves, branch order, log scale, clean errors."""

from __future__ import annotations

import json
import math
import re

import pytest

from core import UserError
from train.plot import build_figure, plot_run, read_metrics, running_mean


def _write(folder, steps, *, lr=1e-3, evals=(), start_loss=5.0, swa=True):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in steps:
        loss = 2.0 + (start_loss - 2.0) * math.exp(-s / 30) + 0.05 * math.sin(s)
        lines.append({"kind": "train", "step": s, "loss": loss, "lr": lr, "grad_norm": 1.0})
        if s in evals:
            rec = {"kind": "eval", "step": s, "val_loss": loss + 0.1}
            if swa:
                rec |= {"val_loss_swa": loss + 0.05, "val_loss_ema": loss + 0.07}
            lines.append(rec)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture()
def run_dir(tmp_path):
    d = tmp_path / "run"
    _write(d, range(1, 1001), evals=range(100, 1001, 100))
    # Branch names sort the other way round from their branch steps (1000 < 300 as text).
    _write(d / "cooldown_1000", range(801, 1001), lr=5e-4, evals=(900, 1000))
    _write(d / "cooldown_300", range(241, 301), lr=5e-4, evals=(300,))
    return d


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def test_averaged_val_curves_and_branches_in_order(run_dir):
    fig = build_figure(str(run_dir))
    ax_loss, ax_lr, _ = fig.axes
    legends = [c for c in ax_loss.get_children() if type(c).__name__ == "Legend"]
    curves, runs = legends
    assert {"val", "val SWA", "val EMA", "train (raw)", "train (running mean)"} <= set(
        _legend_texts(curves)
    )
    want = ["main run", "1: cooldown_300 (steps 240-300)", "2: cooldown_1000 (steps 800-1000)"]
    assert _legend_texts(runs) == want
    assert _legend_texts(ax_lr.get_legend()) == want
    # The SWA and EMA validation losses are drawn, at the eval steps, for every run.
    ys = [tuple(line.get_ydata()) for line in ax_loss.get_lines()]
    train, evals = read_metrics(str(run_dir))
    swa = tuple(evals[s]["val_loss_swa"] for s in sorted(evals))
    ema = tuple(evals[s]["val_loss_ema"] for s in sorted(evals))
    assert swa in ys and ema in ys
    # The loss axis leaves out the initial loss (5.0) so cooldown gains of 0.1 nats show.
    lo, hi = ax_loss.get_ylim()
    assert hi < 3.0 and lo < 2.1 and ax_loss.get_yscale() == "linear"
    assert "2 cooldown branches" in ax_loss.get_title()


def test_log_scale_option_and_png(run_dir):
    fig = build_figure(str(run_dir), log_loss=True)
    assert fig.axes[0].get_yscale() == "log"
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(labels) >= 2  # a sub-decade log axis still gets labelled ticks
    out = plot_run(str(run_dir), str(run_dir / "p.png"), log_loss=True)
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and uncut(out)
    assert plot_run(str(run_dir)) == str(run_dir / "plot.png")


def uncut(png: str) -> bool:
    """True when nothing is drawn in the outer 3 pixels of the image (no legend cut off)."""
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3]
    edges = [img[:3], img[-3:], img[:, :3], img[:, -3:]]
    return all(bool((e > 0.99).all()) for e in edges)


def test_a_run_without_averages_draws_only_raw_val(tmp_path):
    _write(tmp_path / "r", range(1, 51), evals=(25, 50), swa=False)
    fig = build_figure(str(tmp_path / "r"))
    legend = [c for c in fig.axes[0].get_children() if type(c).__name__ == "Legend"][0]
    texts = _legend_texts(legend)
    assert "val" in texts and "val SWA" not in texts
    # The curve legend is wider than the run legend here: the image must hold both whole.
    assert uncut(plot_run(str(tmp_path / "r")))


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"kind": "train", "loss": 3.0}', r"line 2: record has no 'step'"),
        ("not json", r"line 2: is not JSON \(Expecting value"),
        ('{"kind": "eval", "step": "ten"}', r"line 2: step must be an integer"),
        ("[1, 2]", r"line 2: record has no 'step'"),
    ],
)
def test_bad_metrics_records_are_skipped_with_one_warning(tmp_path, capsys, line, match):
    """A record that does not parse is skipped with one warning line (issue 23, item 16); a file
    with no record at all is an error."""
    d = tmp_path / "r"
    d.mkdir()
    good = json.dumps({"kind": "train", "step": 1, "loss": 3.0, "lr": 1e-3})
    (d / "metrics.jsonl").write_text(good + "\n" + line + "\n")
    plot_run(str(d))
    warns = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning: ")]
    assert len(warns) == 1 and re.search(match, warns[0]), warns
    (d / "metrics.jsonl").write_text(line + "\n")
    with pytest.raises(UserError, match=match.replace("line 2", "line 1")):
        plot_run(str(d))


def test_missing_or_empty_metrics(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl in"):
        plot_run(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(UserError, match="has no records yet"):
        plot_run(str(tmp_path))


def test_running_mean():
    assert running_mean([1.0, 2.0, 3.0], 1) == [1.0, 2.0, 3.0]
    sm = running_mean([4.0] * 5 + [0.0] * 5, 3)
    assert sm[0] == 4.0 and 0.0 < sm[-1] < sm[5] < 4.0
