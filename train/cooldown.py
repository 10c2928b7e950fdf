"""Cooldowns branched from a constant-LR checkpoint, and the whole WSD recipe of Hägele et al. 2024
(arXiv:2405.18392, §5): one stable run, then one short cooldown per target length, which replaces
a from-scratch run per length.

A branch at step s towards T steps uses `--scheduler wsd` with `--wsd-fract-decay f` such that
T - int(f * T) = s, so its updates equal those of a straight WSD run of T steps.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

from core import UserError, atomic_write, read_json
from train import checkpoint as ckpt_io
from train import rundir
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
    if ps.scheduler not in ("wsd", "constant") or lr_factor(have - 1, parent.schedule) != 1:
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


RECIPE = "recipe.json"  # OUT/recipe.json: the targets and settings of a --cooldown-targets run
_RECIPE_SECTIONS = ("schedule", "optim", "averaging", "data", "model")


def cooldown_targets(cfg: TrainConfig, targets: list[int]) -> list[dict]:
    """One stable run to the largest branch point, a cooldown per target, one comparison table.

    Resumable: the same command continues a recipe a kill stopped (OUT/recipe.json records it),
    the stable run from its newest checkpoint and each cooldown from its own or its branch point;
    finished cooldowns are read from their summary.json.
    """
    s, out = cfg.schedule, cfg.io.out
    targets = sorted(set(targets))
    branches = {t: cooldown_start(t, s.wsd_fract_decay) for t in targets}
    if min(branches.values()) <= 0:
        raise UserError("a cooldown target is too short: its branch step is 0")
    short = [t for t, b in branches.items() if b >= t]
    if short:
        raise UserError(
            f"--cooldown-targets {short[0]} with --wsd-fract-decay {s.wsd_fract_decay:g} has a "
            f"cooldown of 0 steps (int(f*T) = 0); pass larger targets or --wsd-fract-decay"
        )
    first, warmup = min(branches.values()), s.warmup_steps
    if s.warmup_tokens is None and warmup >= first:  # else the first branch is still warming up
        raise UserError(
            f"--warmup-steps {warmup} does not end before the first cooldown branch (step "
            f"{first}); pass --warmup-steps below {first}"
        )
    stable = cfg.with_(scheduler="wsd", wsd_fract_decay=0.0, iterations=max(branches.values()))
    rundir.claim(out)
    try:
        stable_summary = _stable_run(cfg, stable, targets, frozenset(branches.values()))
        rows = [_cooldown_row(cfg, t, branches[t], stable_summary) for t in targets]
    finally:
        rundir.release(out)
    fps = stable_summary["flops_per_step"]
    recipe = max(branches.values()) * fps + sum(r["cooldown_flops"] for r in rows)
    scratch = sum(r["scratch_flops"] for r in rows)
    total = dict.fromkeys(rows[0], "")
    total.update(
        target_steps="total",
        cooldown_flops=recipe,
        scratch_flops=scratch,
        saved_fraction=1 - recipe / scratch if scratch else "",
    )
    rows.append(total)
    if int(os.environ.get("RANK", "0")) == 0:
        _report(rows, os.path.join(out, "cooldown_table.csv"), recipe, scratch)
    return rows


def _recipe_record(stable: TrainConfig, targets: list[int]) -> dict:
    d = json.loads(json.dumps(stable.to_dict(), default=str))
    return {"targets": targets, **{k: d[k] for k in _RECIPE_SECTIONS if k in d}}


def _stable_run(cfg: TrainConfig, stable: TrainConfig, targets: list[int], save_at) -> dict:
    """The stable run's summary: run, resumed, or (finished) re-summarised from its checkpoint."""
    out = cfg.io.out
    path = os.path.join(out, RECIPE)
    rec = _recipe_record(stable, targets)
    if os.path.lexists(path) and not cfg.io.overwrite:
        have = read_json(path, nofollow=True, what="recipe record")
        if have != rec:
            diff = "targets" if not isinstance(have, dict) else next(
                (k for k in rec if have.get(k) != rec[k]), "settings"
            )  # fmt: skip
            raise UserError(
                f"{out} holds a --cooldown-targets recipe with other {diff}: pass the same "
                "flags to resume it, --overwrite to replace it, or another --out"
            )
        ckpt = rundir.newest_checkpoint(out)
        if ckpt is not None:
            return run(stable, start=ckpt_io.load(ckpt), save_at=save_at, resume=True)
        stable = stable.with_(overwrite=True)  # killed before its first checkpoint
    else:
        rundir.prepare_new(out, overwrite=cfg.io.overwrite)  # refuses any other run in OUT
    atomic_write(path, json.dumps(rec, indent=1) + "\n", inside=out)
    return run(stable.with_(overwrite=stable.io.overwrite), save_at=save_at)


def _cooldown_row(cfg: TrainConfig, t: int, branch: int, stable_summary: dict) -> dict:
    """Run (or resume, or read back) the cooldown to `t` and return its row of the table."""
    s, out = cfg.schedule, cfg.io.out
    over = {
        "iterations": t,
        "wsd_fract_decay": s.wsd_fract_decay,
        "decay_type": s.decay_type,
        "wsd_final_lr_scale": s.wsd_final_lr_scale,
        "out": os.path.join(out, f"cooldown_{t}"),
    }
    summary = _finished(over["out"], t)
    if summary is None:
        payload = ckpt_io.load(os.path.join(out, "ckpts", str(branch)))
        bcfg = branch_config(payload["train_config"], over)
        own = rundir.newest_checkpoint(over["out"]) if os.path.isdir(over["out"]) else None
        if own is not None:
            summary = run(bcfg, start=ckpt_io.load(own), resume=True)
        else:
            summary = cooldown_from(payload, bcfg.with_(overwrite=True))
    fps = stable_summary["flops_per_step"]
    avg = {k: v for k, v in summary.items() if k.startswith("val_loss_")}
    best = min(avg, key=avg.get) if avg else None
    return {
        "target_steps": t,
        "target_tokens": t * stable_summary["tokens_per_step"],
        "branch_step": branch,
        "val_loss": summary.get("val_loss"),
        "val_loss_avg": avg[best] if best else None,
        "avg_kind": best[9:] if best else "",
        "cooldown_flops": (t - branch) * fps,
        "scratch_flops": t * fps,
        "saved_fraction": "",
    }


def _finished(folder: str, t: int) -> dict | None:
    """The summary of a cooldown that already reached step `t` (None: run or resume it)."""
    path = os.path.join(folder, "summary.json")
    if not os.path.isfile(path) or os.path.islink(path):
        return None
    try:
        summary = read_json(path, nofollow=True)
    except UserError:
        return None  # damaged: the cooldown is resumed and writes it again
    ok = isinstance(summary, dict) and summary.get("final_step") == t
    vals = [v for k, v in summary.items() if k.startswith("val_loss")] if ok else []
    if not ok or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        return None
    return summary


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
