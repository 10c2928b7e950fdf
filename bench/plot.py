"""`bench plot DIR`: PNGs of step time vs params/FLOPs/memory traffic, tokens/s, loss vs time."""

from __future__ import annotations

import json
import os


def plot_dir(out_dir: str, png_dir: str | None = None) -> list[str]:
    """Write the PNGs (into DIR by default); returns their paths. Only status-ok rows are drawn."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on sweep machines
    import matplotlib.pyplot as plt

    from .show import load_frame

    df = load_frame(out_dir)
    df = df[df["status"] == "ok"]
    if df.empty:
        raise ValueError(f"no ok rows in {out_dir} to plot")
    png_dir = png_dir or out_dir
    os.makedirs(png_dir, exist_ok=True)
    written = []
    for x, label in (
        ("params", "parameters"),
        ("flops_per_step", "FLOPs / step"),
        ("memory_traffic", "memory traffic (bytes / step)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(df[x], df["step_ms_median"], s=14)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("median step time (ms)")
        path = os.path.join(png_dir, f"step_ms_vs_{x}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(df["params"], df["tokens_per_s"], s=14)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("tokens / s")
    path = os.path.join(png_dir, "tokens_per_s.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, r in df.iterrows():
        curve = json.loads(r["loss_curve"]) if isinstance(r.get("loss_curve"), str) else []
        if curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve], lw=0.8)
    ax.set_xlabel("timed wall time (s)")
    ax.set_ylabel("training loss")
    path = os.path.join(png_dir, "loss_vs_time.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
