"""The run directory: which folder a run writes, that runs never mix, and its metrics file.

A run owns its folder (`claim`: an flock inside it, see core.owner) from setup to its summary, so
a second writer on the same --out stops with one line naming the holder; the folder may not lie
inside another run, sweep or dataset, and none of its managed entries may be a symlink.

`metrics.jsonl` holds one JSON record per line: kind "train" (one per optimizer step: step, loss,
lr, grad_norm, step_ms = the mean step time of the interval the record was read in, tokens_per_s,
mfu) and kind "eval" (step, val_loss, val_loss_<average>). Records are flushed and fsync'ed before
every checkpoint, and a resumed run first drops the records past its checkpoint's step, so the file
ends up with every step exactly once however often the run was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys

from core import UserError, atomic_write, owner
from core.files import _why, decode_json, open_append, read_bytes, refuse_symlinks

METRICS = "metrics.jsonl"
WANDB_ID = "wandb_id.txt"  # train.logger.WANDB_ID_FILE: the wandb run a resumed run continues
# A folder holding one of these is a run directory (and --overwrite removes exactly these).
RUN_FILES = (
    "config.json",
    METRICS,
    "summary.json",
    "cooldown_table.csv",
    "plot.png",
    WANDB_ID,
)
RUN_DIRS = ("latest", "ckpts", "avgs", "wandb")
# core.atomic_write's temporary files: NAME.tmp.PID
_TEMP = re.compile(r"\.tmp\.[0-9]+$")


def is_run_dir(path: str) -> bool:
    """Whether `path` holds (part of) a run: its settings, metrics or checkpoints. Checkpoints
    alone count too: a new run beside them would later resume from the other run's."""
    names = ("config.json", METRICS, "latest", "ckpts")
    return any(os.path.lexists(os.path.join(path, f)) for f in names)


def claim(out: str, parent: str | None = None) -> None:
    """Make this process the one writer of run folder OUT (UserError if another holds it).

    OUT may not lie inside another run, sweep or dataset (`parent`: the run a cooldown branch
    belongs to, which may enclose it), may not be a sweep or dataset itself, and none of the
    entries a run writes may be a symlink. Undone by `release`.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"cannot use {out} as the run directory: it is a file")
    kind = owner.kind_of(out)
    if parent is None and os.path.basename(os.path.normpath(out)).startswith("cooldown_"):
        parent = os.path.dirname(os.path.abspath(out))  # a branch folder of its own run
    if kind != "train run":  # an existing run is resumed or replaced in place
        owner.check_not_nested(out, "--out", allow=parent)
    if kind in ("sweep", "dataset"):
        raise UserError(f"--out {out} holds a {kind}: a run there would mix into it")
    refuse_symlinks(out, RUN_FILES + RUN_DIRS + ("recipe.json",))
    owner.own(out, "train run")
    try:
        check_entries(out)
    except UserError:
        owner.release(out)
        raise


def check_entries(out: str) -> None:
    """UserError when a checkpoint or cooldown folder inside OUT is a symlink."""
    refuse_symlinks(out, RUN_FILES + RUN_DIRS)
    for sub in ("latest", "ckpts", "avgs"):
        d = os.path.join(out, sub)
        if os.path.isdir(d):
            refuse_symlinks(d, os.listdir(d))
    if os.path.isdir(os.path.join(out, "ckpts")):
        for step in os.listdir(os.path.join(out, "ckpts")):
            d = os.path.join(out, "ckpts", step)
            if os.path.isdir(d):
                refuse_symlinks(d, os.listdir(d))
    refuse_symlinks(out, [n for n in os.listdir(out) if n.startswith("cooldown_")])


_HANDED: set[str] = set()  # folders `auto_resume` claimed for the run it decided on


def release(out: str) -> None:
    """Undo a `claim` (and the claim `auto_resume` made for this run)."""
    owner.release(out)
    key = os.path.realpath(out)
    if key in _HANDED:
        _HANDED.discard(key)
        owner.release(out)


def newest_checkpoint(out: str) -> str | None:
    """OUT's checkpoint file of the highest step among latest/ and ckpts/N (None: none).

    The step is read from the names alone (ckpts/N) and from latest's payload only when needed,
    so a preempted run resumes from whichever checkpoint got further."""
    latest = os.path.join(out, "latest", "ckpt.pt")
    ckpts = os.path.join(out, "ckpts")
    steps = sorted(
        (int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else [],
        reverse=True,
    )
    perm = next(
        (os.path.join(ckpts, str(n), "ckpt.pt") for n in steps
         if os.path.isfile(os.path.join(ckpts, str(n), "ckpt.pt"))),
        None,
    )  # fmt: skip
    if not os.path.isfile(latest):
        return perm
    if perm is None:
        return latest
    from train.checkpoint import step_of

    return perm if int(os.path.basename(os.path.dirname(perm))) > step_of(latest) else latest


def auto_resume(cfg):
    """(checkpoint to resume, cfg) for `--auto-resume`: OUT's newest checkpoint, else (None, cfg)
    with the run started over when OUT holds a run killed before its first checkpoint (its
    metrics are of steps that no checkpoint keeps). A finished run without checkpoints is left
    alone (the usual "already holds a run" refusal)."""
    out = cfg.io.out
    if not os.path.isdir(out):
        return None, cfg
    refuse_symlinks(out, RUN_DIRS)
    claim(out)  # decide under the lock: another run may be writing OUT right now
    _HANDED.add(os.path.realpath(out))  # the run decided on releases this claim too
    ckpt = newest_checkpoint(out)
    if ckpt is not None:
        return ckpt, cfg
    if is_run_dir(out) and not os.path.lexists(os.path.join(out, "summary.json")):
        print(f"{out}: its run stopped before a first checkpoint: starting over", file=sys.stderr)
        return None, cfg.with_(overwrite=True)
    return None, cfg


def prepare_new(out: str, *, overwrite: bool) -> None:
    """Refuse to mix a new run into an existing one; with `overwrite`, clear the old run first."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"cannot use {out} as the run directory: it is a file")
    if is_run_dir(out):
        if not overwrite:
            raise UserError(
                f"{out} already holds a run; pass --overwrite to replace it, "
                f"--resume-from {out} to continue it, or another --out"
            )
        try:  # folders first, config.json and metrics.jsonl last: killed midway, OUT still
            # reads as a run (refused, or cleared again), never as a fresh folder with old files
            for name in sorted(os.listdir(out)):
                full = os.path.join(out, name)
                if os.path.isdir(full) and (name in RUN_DIRS or name.startswith("cooldown_")):
                    shutil.rmtree(full)
            for name in sorted(RUN_FILES, key=lambda n: n in ("config.json", METRICS)):
                if os.path.isfile(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
        except OSError as e:
            raise UserError(f"cannot clear {out}: {e.strerror or e}") from None
    make_dir(out)


def remove_stale_temps(out: str) -> list[str]:
    """Delete the temporary files a killed run left in OUT (checkpoints being written when it
    died: latest/, ckpts/N/, avgs/, and its own json files); ckpts/N folders left empty go too.
    They are never read as checkpoints (only `ckpt.pt` is). Returns the removed paths."""
    mine = f".tmp.{os.getpid()}"
    ckpts = os.path.join(out, "ckpts")
    steps = sorted(os.listdir(ckpts)) if os.path.isdir(ckpts) else []
    folders = [out] + [os.path.join(out, d) for d in ("latest", "avgs")]
    folders += [os.path.join(ckpts, d) for d in steps if d.isdigit()]
    removed = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            ours = folder != out or _TEMP.sub("", name) in RUN_FILES  # OUT may hold user files
            if ours and _TEMP.search(name) and not name.endswith(mine) and os.path.isfile(path):
                with contextlib.suppress(OSError):
                    os.remove(path)
                    removed.append(path)
        if os.path.dirname(folder) == ckpts:
            remove_if_empty(folder)
    return removed


def remove_if_empty(path: str) -> None:
    """Remove folder `path` if nothing but (at most) an ownership lock is left in it."""
    with contextlib.suppress(OSError):
        if os.listdir(path) == [owner.LOCK_NAME]:
            os.remove(os.path.join(path, owner.LOCK_NAME))
    with contextlib.suppress(OSError):
        os.rmdir(path)  # fails (and is ignored) unless `path` is an empty folder


def make_dir(out: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run directory {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"cannot write into the run directory {out}: permission denied")


def write_json(path: str, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=str) + "\n", inside=os.path.dirname(path))


class MetricsLog:
    """Appends metric records to OUT/metrics.jsonl and to the optional RunLogger (wandb, tb)."""

    def __init__(self, out: str, *, truncate_after: int | None = None, logger=None) -> None:
        self.path = os.path.join(out, METRICS)
        if truncate_after is not None:
            self._truncate(truncate_after)
        self.fh = os.fdopen(open_append(self.path), "a")  # never through a planted symlink
        self.logger = logger

    def _truncate(self, step: int) -> None:
        """Keep the records up to `step` (a resumed run rewrites the steps after it)."""
        if not os.path.lexists(self.path):
            return
        kept = []
        for line in read_bytes(self.path, nofollow=True).split(b"\n"):
            try:
                rec = decode_json(line)
            except ValueError:
                continue  # a line cut by a kill, or garbage: never a step of this run
            step_ok = isinstance(rec, dict) and type(rec.get("step")) is int
            if step_ok and rec["step"] <= step:
                kept.append(line.decode() + "\n")
        atomic_write(self.path, "".join(kept))

    def write(self, rec: dict) -> None:
        try:
            self.fh.write(json.dumps(rec) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {_why(e)}") from None
        if self.logger is not None:
            self.logger.log(rec)

    def sync(self) -> None:
        """Flush and fsync: everything written so far survives a kill."""
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None

    def close(self) -> None:
        self.sync()
        self.fh.close()
        if self.logger is not None:
            self.logger.close()


def run_logger(cfg, out: str, config: dict, *, resume: bool = False):
    """`train.logger.RunLogger` for --wandb / --tensorboard, or None when neither is asked for.
    `resume`: the run continues in OUT, so wandb continues the run OUT/wandb_id.txt names."""
    io = cfg.io
    if not (io.wandb or io.tensorboard):
        return None
    try:
        from train.logger import RunLogger
    except ImportError as e:
        raise UserError(f"--wandb/--tensorboard logging is not available: {e}") from None
    name = io.experiment_name or os.path.basename(os.path.abspath(out))
    if io.wandb_run_prefix:
        name = f"{io.wandb_run_prefix}_{name}"
    return RunLogger(
        out,
        wandb=io.wandb,
        wandb_project=io.wandb_project,
        experiment_name=name,
        tensorboard=io.tensorboard,
        config=config,
        resume=resume,
    )


def summary_of(t, wall_s: float) -> dict:
    """summary.json of a finished `train.loop.Trainer` `t`."""
    s = t.cfg.schedule
    return {
        "final_step": t.step,
        "iterations": s.iterations,
        "steps_total": t.end,
        "scheduler": s.scheduler,
        "minutes": s.minutes,
        "budget_plans": t.plans,
        "tokens": t.step * t.tokens_per_step,
        "tokens_seen": t.step * t.tokens_per_step,
        "tokens_per_step": t.tokens_per_step,
        "flops_per_step": t.fps,
        "flops_this_run": (t.step - (t.start or {}).get("step", 0)) * t.fps,
        "params": t.n_params,
        "wall_s": wall_s,
        "warmup_steps": s.warmup_steps,
        **t.effective(),
        **{k: v for k, v in t.last_eval.items() if k.startswith("val_loss")},
    }
