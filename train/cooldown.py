"""Cooldowns branched from a constant-LR checkpoint, and the whole WSD recipe of Hägele et al. 2024
(arXiv:2405.18392, §5): one stable run, then one short cooldown per target length, which replaces
a from-scratch run per length.

A branch at step s towards T steps uses `--scheduler wsd` with `--wsd-fract-decay f` such that
T - int(f * T) = s, so its updates equal those of a straight WSD run of T steps.
"""

from __future__ import annotations

import csv
import io
import os

from core import UserError, atomic_write
from train import checkpoint as ckpt_io
from train.config import TrainConfig
from train.loop import run
from train.schedules import lr_factor
from train.timebudget import cooldown_start


def branch_config(parent: TrainConfig, changes: dict) -> TrainConfig:
    """The parent's settings with `changes` on top, as a WSD run (warmup already in steps)."""
    return parent.with_(**{**changes, "scheduler": "wsd", "warmup_tokens": None})


def check_branch(payload: dict, cfg: TrainConfig) -> None:
    s = cfg.schedule
    want = cooldown_start(s.iterations, s.wsd_fract_decay)
    have = int(payload["step"])
    if have != want:
        raise UserError(
            f"checkpoint is at step {have} but --iterations {s.iterations} with --wsd-fract-decay "
            f"{s.wsd_fract_decay} branches at step {want} (= T - int(f*T))"
        )
    parent: TrainConfig = payload["train_config"]
    ps = parent.schedule
    if (
        ps.scheduler not in ("wsd", "constant")
        or lr_factor(have - 1, **parent.schedule_kwargs()) != 1
    ):
        raise UserError("cooldowns must branch from a constant-LR (WSD stable phase) checkpoint")


def branch_dir(payload: dict, cfg: TrainConfig) -> str:
    """OUT of a branch: a new folder inside the checkpoint's own run folder."""
    s = cfg.schedule
    name = f"cooldown_{s.iterations}_{s.decay_type}_{s.wsd_fract_decay:g}"
    return os.path.join(ckpt_io.run_dir_of(payload["path"]), name)


def cooldown_from(payload: dict, cfg: TrainConfig) -> dict:
    """Run the branch `cfg` (from `branch_config`) from checkpoint `payload`."""
    check_branch(payload, cfg)
    return run(cfg, start=payload)


def cooldown_targets(cfg: TrainConfig, targets: list[int]) -> list[dict]:
    """One stable run to the largest branch point, a cooldown per target, one comparison table."""
    s, out = cfg.schedule, cfg.io.out
    targets = sorted(set(targets))
    branches = {t: cooldown_start(t, s.wsd_fract_decay) for t in targets}
    if min(branches.values()) <= 0:
        raise UserError("a cooldown target is too short: its branch step is 0")
    first, warmup = min(branches.values()), s.warmup_steps
    if s.warmup_tokens is None and warmup >= first:  # else the first branch is still warming up
        raise UserError(
            f"--warmup-steps {warmup} does not end before the first cooldown branch (step "
            f"{first}); pass --warmup-steps below {first}"
        )
    stable = cfg.with_(scheduler="wsd", wsd_fract_decay=0.0, iterations=max(branches.values()))
    stable_summary = run(stable, save_at=frozenset(branches.values()))
    fps = stable_summary["flops_per_step"]
    rows = []
    for t in targets:
        payload = ckpt_io.load(os.path.join(out, "ckpts", str(branches[t])))
        over = {
            "iterations": t,
            "wsd_fract_decay": s.wsd_fract_decay,
            "decay_type": s.decay_type,
            "wsd_final_lr_scale": s.wsd_final_lr_scale,
            "out": os.path.join(out, f"cooldown_{t}"),
        }
        summary = cooldown_from(payload, branch_config(payload["train_config"], over))
        avg = {k: v for k, v in summary.items() if k.startswith("val_loss_")}
        best = min(avg, key=avg.get) if avg else None
        rows.append(
            {
                "target_steps": t,
                "target_tokens": t * stable_summary["tokens_per_step"],
                "branch_step": branches[t],
                "val_loss": summary.get("val_loss"),
                "val_loss_avg": avg[best] if best else None,
                "avg_kind": best[9:] if best else "",
                "cooldown_flops": (t - branches[t]) * fps,
                "scratch_flops": t * fps,
                "saved_fraction": "",
            }
        )
    recipe = max(branches.values()) * fps + sum(r["cooldown_flops"] for r in rows)
    scratch = sum(r["scratch_flops"] for r in rows)
    total = dict.fromkeys(rows[0], "")
    total.update(
        target_steps="total",
        cooldown_flops=recipe,
        scratch_flops=scratch,
        saved_fraction=1 - recipe / scratch,
    )
    rows.append(total)
    if int(os.environ.get("RANK", "0")) == 0:
        _report(rows, os.path.join(out, "cooldown_table.csv"), recipe, scratch)
    return rows


def _report(rows: list[dict], path: str, recipe: float, scratch: float) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())
    heads = ("target", "tokens", "branch", "val_loss", "val_avg", "cd_flops", "scratch")
    print(" ".join(h.rjust(w) for h, w in zip(heads, (8, 12, 7, 9, 9, 10, 10))))
    for r in rows[:-1]:
        va = f"{r['val_loss_avg']:.4f}" if r["val_loss_avg"] is not None else "-"
        print(
            f"{r['target_steps']:>8} {r['target_tokens']:>12} {r['branch_step']:>7} "
            f"{r['val_loss']:>9.4f} {va:>9} {r['cooldown_flops']:>10.3e} "
            f"{r['scratch_flops']:>10.3e}"
        )
    print(
        f"total: recipe {recipe:.3e} FLOPs (stable run + cooldowns) vs {scratch:.3e} "
        f"from scratch -> {100 * (1 - recipe / scratch):.1f}% saved; table in {path}"
    )
