"""Experiment logging beside metrics.jsonl: Weights & Biases (`--wandb`) and TensorBoard
(`--tensorboard DIR`).

`RunLogger.log(record)` takes the records metrics.jsonl gets ({"kind": "train"|"eval", "step", ...})
and logs their numbers as scalars named like the seed code's wandb charts: "train/loss", "train/lr",
"val/loss", "val/loss_swa", ... Both backends are optional packages, imported only when asked for;
a missing one is a one-line UserError. With WANDB_MODE=offline, wandb writes its run files under
OUT/wandb/ for a later `wandb sync`. TensorBoard event files go to DIR/<run name>/, so one DIR
collects many runs (`tensorboard --logdir DIR`). `log_run` logs one finished run at once (a sweep
logs one run per config that way).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

from core import UserError, atomic_write
from core.files import read_bytes

WANDB_ID_FILE = "wandb_id.txt"  # lets a resumed run continue the same wandb run


def scalars(record: dict) -> dict[str, float]:
    """The numeric fields of a metrics record under chart names ("train/loss", "val/loss_ema")."""
    kind = record.get("kind")
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("kind", "step") or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or value is None:
            continue
        if kind == "eval" and key.startswith("val_"):
            name = "val/" + key[4:]  # val_loss -> val/loss, val_loss_swa -> val/loss_swa
        elif kind:
            name = f"{'val' if kind == 'eval' else kind}/{key}"
        else:
            name = key
        out[name] = float(value)
    return out


def _open_wandb(out_dir: str, project: str, name: str, config: dict, resume: bool):
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install 'steptime[wandb]'") from None
    id_path = os.path.join(out_dir, WANDB_ID_FILE)
    run_id = None
    if resume and os.path.lexists(id_path):
        run_id = read_bytes(id_path, nofollow=True, limit=4096).decode(errors="replace").strip()
        run_id = run_id or None
    try:
        run = wandb.init(
            project=project,
            name=name,
            dir=out_dir,
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",  # several runs in one process (cooldown targets, sweeps)
            settings=wandb.Settings(console="off"),  # our log lines stay on stderr, unwrapped
        )
    except Exception as e:  # noqa: BLE001  (wandb raises UsageError, CommError, ... on setup)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"wandb could not start ({why}); run `wandb login` or set WANDB_MODE=offline"
        ) from None
    atomic_write(id_path, run.id + "\n")
    return run


def _open_tensorboard(log_dir: str, config: dict):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        msg = "--tensorboard needs the tensorboard package: pip install 'steptime[tensorboard]'"
        raise UserError(msg) from None
    try:
        writer = SummaryWriter(log_dir=log_dir)
    except OSError as e:
        raise UserError(f"cannot write TensorBoard logs to {log_dir}: {e.strerror or e}") from None
    text = json.dumps(config, indent=1, sort_keys=True, default=str)
    writer.add_text("config", "    " + text.replace("\n", "\n    "))  # markdown code block
    return writer


class RunLogger:
    """Sends metrics records to wandb and/or TensorBoard; does nothing when neither is on."""

    def __init__(
        self,
        out_dir: str,
        *,
        wandb: bool = False,
        wandb_project: str = "steptime",
        experiment_name: str | None = None,
        tensorboard: str | None = None,
        config: dict | None = None,
        resume: bool = False,
    ) -> None:
        """`resume`: continue the wandb run whose id OUT/wandb_id.txt holds (a resumed train run);
        otherwise a new wandb run starts and its id replaces the file's."""
        self.name = experiment_name or os.path.basename(os.path.normpath(os.path.abspath(out_dir)))
        self.config = dict(config or {})
        self.last_step = 0
        self._wandb = None
        self._tb = None
        if wandb or tensorboard:
            try:
                os.makedirs(out_dir, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot write {out_dir}: {e.strerror or e}") from None
        if wandb:
            self._wandb = _open_wandb(out_dir, wandb_project, self.name, self.config, resume)
        if tensorboard:
            self._tb = _open_tensorboard(os.path.join(tensorboard, self.name), self.config)

    @property
    def enabled(self) -> bool:
        return self._wandb is not None or self._tb is not None

    def log(self, record: dict) -> None:
        """Log one metrics record (needs an integer "step")."""
        if not self.enabled:
            return
        step = int(record["step"])
        values = scalars(record)
        if not values:
            return
        self.last_step = max(self.last_step, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)
        if self._tb is not None:
            for name, v in values.items():
                self._tb.add_scalar(name, v, global_step=step)
            if record.get("kind") == "eval":
                self._tb.flush()

    def summary(self, values: dict) -> None:
        """Final numbers of the run (e.g. summary.json): wandb's run summary, TB "summary/*"."""
        nums = {
            k: float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if self._wandb is not None:
            self._wandb.summary.update(nums)
        if self._tb is not None:
            for k, v in nums.items():
                self._tb.add_scalar(f"summary/{k}", v, global_step=self.last_step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log_run(
    out_dir: str,
    records: Iterable[dict],
    *,
    config: dict,
    summary: dict | None = None,
    **options,
) -> None:
    """Log a finished run in one go: `records` like metrics.jsonl's, then `summary`.

    `options` are RunLogger's (wandb, wandb_project, experiment_name, tensorboard). A sweep calls
    this once per config, e.g. with experiment_name=config_id and records built from the
    worker's loss curve ({"kind": "train", "step": i, "loss": ..., "time_s": ...}).
    """
    with RunLogger(out_dir, config=config, **options) as lg:
        for rec in records:
            lg.log(rec)
        if summary:
            lg.summary(summary)
