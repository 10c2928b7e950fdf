"""`train --plot RUN_DIR`: loss and LR against step, with cooldown branches (sub-run directories)
on the same axes."""

from __future__ import annotations

import json
import os


def read_metrics(run_dir: str) -> tuple[dict[int, dict], dict[int, dict]]:
    """(train records by step, eval records by step); later lines win (resumes rewrite steps)."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            (evals if rec.get("kind") == "eval" else train)[int(rec["step"])] = rec
    return train, evals


def find_runs(run_dir: str) -> list[str]:
    """RUN_DIR first, then every subdirectory (any depth) holding a metrics.jsonl, sorted."""
    runs = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        dirnames.sort()
        if "metrics.jsonl" in filenames:
            runs.append(dirpath)
    return runs


def plot_run(run_dir: str, out: str | None = None) -> str:
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        raise ValueError(f"no metrics.jsonl in {run_dir}")
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for i, d in enumerate(find_runs(run_dir)):
        train, evals = read_metrics(d)
        label = "main" if i == 0 else os.path.relpath(d, run_dir)
        steps = sorted(train)
        color = f"C{i % 10}"
        if steps:
            losses = [train[s]["loss"] for s in steps]
            ax_loss.plot(steps, losses, color=color, alpha=0.5, lw=0.8, label=f"{label} train")
            ax_lr.plot(steps, [train[s]["lr"] for s in steps], color=color, label=label)
        es = sorted(evals)
        if es:
            vals = [evals[s]["val_loss"] for s in es]
            ax_loss.plot(es, vals, "o-", color=color, ms=3, label=f"{label} val")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    out = out or os.path.join(run_dir, "plot.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
