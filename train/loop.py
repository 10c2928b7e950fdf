"""The training loop: schedule, steps, averages, evals, checkpoints, logs; resume in place.

`run(cfg, start=payload)` trains one run described by a TrainConfig, optionally continuing from a
checkpoint. A resumed run and a cooldown branch are the same loop started from a checkpoint, so
"10 steps + checkpoint + 10 steps" and "a cooldown branched from a constant run" replay exactly the
updates of a straight run.

The loop never reads the device in a step that does not log: losses and gradient norms stay on
the device until a read point (a log, eval, checkpoint or planning step, or the last step), where
all of them since the previous read come back in one transfer and become one metrics record per
step.
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch
import torch.distributed as dist

from core import UserError
from model import costs
from train import checkpoint as ckpt_io
from train import rundir
from train.averaging import WindowSnapshots, swap_in, warn_window_files
from train.config import TrainConfig
from train.schedules import lr_factor
from train.session import Session
from train.step import evaluate
from train.timebudget import BudgetPlanner, cooldown_start, warmup_for

CPU_WORK_NOTE = 2e11  # parameters x steps above which a CPU run is called out as long


def _fmt_tok(x: float) -> str:
    return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


class Trainer:
    """One run: `setup()`, `restore(payload)` (optional), `train()`, `finish()`."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        start: dict | None = None,
        save_at: frozenset[int] = frozenset(),
        resume: bool = False,
    ) -> None:
        self.cfg, self.start, self.save_at, self.resume = cfg, start, save_at, resume
        self.step, self.pending, self.last_eval = 0, [], {}
        self.metrics, self.bar, self.planner, self.plans = None, None, None, 0
        self.last_lr = math.inf

    # ------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.session = ses = Session.build(self.cfg)
        self.cfg = cfg = ses.cfg  # warmup resolved
        self.rank, self.world, self.device, self.master = (
            ses.rank,
            ses.world,
            ses.device,
            ses.master,
        )
        self.kernels, self.dtype, self.model_cfg = ses.kernels, ses.dtype, ses.model_cfg
        self.raw, self.opt, self.sampler = ses.raw, ses.opt, ses.sampler
        a = cfg.averaging
        self.windows = WindowSnapshots(
            self.raw,
            self.opt,
            swa=a.weight_average,
            horizon=a.wa_horizon,
            max_windows=a.max_num_wa_sweeps if a.wa_sweep_horizon else 1,
            ema=a.exponential_moving_average,
        )
        d = cfg.data  # the same batches every eval, as the seed does
        self.eval_set = ses.val_batches(d.batch_size, d.eval_batches, d.data_seed)
        self.tokens_per_step = ses.tokens_per_step
        self.n_params = sum(p.numel() for p in self.raw.parameters())
        self.fps = float(costs.train_flops(self.model_cfg, cfg.global_batch(self.world))["exact"])
        self.device_name = ses.device_name
        self.end = cfg.schedule.iterations
        if self.master:  # everything is validated before the first file is written
            self._check_run_dir()

    def _check_run_dir(self) -> None:
        out = self.cfg.io.out
        branch = self.start is not None and not self.resume  # a cooldown inside its own run
        rundir.claim(out, ckpt_io.run_dir_of(self.start["path"]) if branch else None)
        if self.start is None:
            rundir.prepare_new(out, overwrite=self.cfg.io.overwrite)
        else:
            rundir.make_dir(out)
        rundir.remove_stale_temps(out)  # of a run killed while writing a checkpoint

    # ---------------------------------------------------------------------------------- restore
    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint: weights, optimizer and averages, windows, RNG, data."""
        try:
            self.raw.load_state_dict(payload["model"])
            osd = payload["optimizer"]
            if (
                self.session.fused
            ):  # this run's hyperparameters win (a branch may turn averaging on)
                keep = ("params", "step", "skipped_steps", "average")
                for saved, now in zip(osd.get("param_groups", []), self.opt.param_groups):
                    saved.update({k: v for k, v in now.items() if k not in keep})
            ckpt_io.check_optimizer_fits(osd, [g["params"] for g in self.opt.param_groups])
            self.opt.load_state_dict(osd)
            self.windows.load_state_dict(payload.get("averager") or {})
            if self.session.scaler is not None and payload.get("scaler"):
                self.session.scaler.load_state_dict(payload["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"checkpoint does not fit this run: {msg}") from None
        try:
            ckpt_io.set_rng_state(payload["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError):
            raise UserError("the checkpoint's RNG state cannot be restored") from None
        self.step = int(payload["step"])
        self.sampler.set_step(int(payload["data_step"]))

    # ------------------------------------------------------------------------------------ train
    def train(self) -> None:
        cfg = self.cfg
        self._open_outputs()
        if cfg.schedule.minutes is not None:
            fract = cfg.schedule.wsd_fract_decay if cfg.schedule.scheduler == "wsd" else 0.0
            self.planner = BudgetPlanner(cfg.schedule.minutes * 60, fract, self.end)
        self.session.model.train()
        self.t_start = self.t_read = time.perf_counter()
        while self.step < self.end:
            step = self.step
            lr = cfg.schedule.lr * lr_factor(step, self.cfg.schedule)
            p = self.planner
            if p is not None and p.cooldown_at is not None and step > p.cooldown_at:
                # a cooldown stretched by a re-plan would raise the LR a little: hold it instead
                lr = min(lr, self.pending[-1][1] if self.pending else self.last_lr)
            self.last_lr = lr
            stats = self.session.step(lr)
            self.step = done = step + 1
            self.pending.append((done, lr, stats))
            window = self.windows.update(done)
            if self.bar is not None:
                self.bar.update(1)
            self._after_step(done, window)
        if self.bar is not None:
            self.bar.close()

    def _after_step(self, done: int, window: bool) -> None:
        cfg, io = self.cfg, self.cfg.io
        save_window = window and cfg.averaging.wa_save_windows
        logs = done == self.end or bool(io.log_interval and done % io.log_interval == 0)
        p = self.planner  # --minutes: plan once timed, then re-plan at every log step, to the end
        plan = p is not None and done < self.end and (p.wants(done) or (logs and p.planned))
        if plan or logs or save_window or self._eval_due(done) or self._ckpt_paths(done):
            self._read(done, logs)
        if plan:
            self._replan(done)
        if save_window and self.master:
            self.windows.save_window(os.path.join(io.out, "avgs", f"{done}.pt"))
        synced = False
        if self._eval_due(done):
            self._evaluate(done)
            synced = True
        saved = None
        for path in self._ckpt_paths(done):
            saved = self._save(path, done, saved)
            synced = True
        if synced:  # eval and checkpoint time stays out of the next interval's step time
            self.t_read = time.perf_counter()

    def _eval_due(self, done: int) -> bool:
        ei = self.cfg.io.eval_interval
        return done == self.end or bool(ei and done % ei == 0)

    def _ckpt_paths(self, done: int) -> list[str]:
        io, s = self.cfg.io, self.cfg.schedule
        paths = []  # the permanent checkpoint first: a kill before latest/ keeps it
        keep = (io.permanent_ckpt_interval and done % io.permanent_ckpt_interval == 0) or (
            done in self.save_at
        )
        branch = s.scheduler == "wsd" and io.branch_ckpt and 0 < s.wsd_fract_decay
        if branch and done < self.end and done == cooldown_start(self.end, s.wsd_fract_decay):
            keep = (
                keep or lr_factor(done - 1, self.cfg.schedule) == 1.0
            )  # a constant-LR branch point
        if keep:
            paths.append(f"{io.out}/ckpts/{done}")
        if io.latest_ckpt_interval and done % io.latest_ckpt_interval == 0:
            paths.append(f"{io.out}/latest")
        final = f"{io.out}/latest"
        if done == self.end and io.final_ckpt and final not in paths:
            paths.append(final)
        return paths

    # ----------------------------------------------------------------------------- read points
    def _read(self, done: int, log: bool) -> None:
        """Bring the pending steps' losses and norms to the host (one transfer) and record them."""
        if not self.pending:
            return
        nan = torch.full((), math.nan, device=self.device)
        losses = torch.stack([s.loss.float() for _, _, s in self.pending])
        if self.world > 1:
            dist.all_reduce(losses)  # SUM, then divide: gloo has no AVG
            losses /= self.world
        norms = torch.stack(
            [nan if s.grad_norm is None else s.grad_norm.float() for _, _, s in self.pending]
        )
        values = torch.stack([losses, norms]).tolist()  # the one host read of the interval
        now = time.perf_counter()
        dt = (now - self.t_read) / len(self.pending)
        since = self.t_read - self.t_start  # wall-clock seconds of this process at the first one
        self.t_read = now
        for (step, _, _), loss in zip(self.pending, values[0]):
            if not math.isfinite(loss):
                raise UserError(f"loss became {loss} at step {step}; lower --lr")
        if self.master:
            tok_s = self.tokens_per_step / dt if dt > 0 else math.nan
            mfu = costs.mfu(tok_s, self.model_cfg, self.device_name, dtype=self.dtype)
            for i, ((step, lr, _), loss, gn) in enumerate(zip(self.pending, *values)):
                rec = {"kind": "train", "step": step, "loss": loss, "lr": lr, "grad_norm": gn}
                rec.update(step_ms=dt * 1e3, tokens_per_s=tok_s, mfu=mfu)
                rec["time_s"] = round(since + (i + 1) * dt, 4)  # for loss against wall clock
                self.metrics.write(rec)
            if log:
                mfu_s = "n/a" if mfu is None else f"{100 * mfu:.0f}%"
                self._log(
                    f"step {done}/{self.end} | loss {values[0][-1]:.2f} | "
                    f"lr {self.pending[-1][1]:.1e} | {dt * 1e3:.1f} ms | "
                    f"{_fmt_tok(tok_s)} tok/s | MFU {mfu_s}"
                )
        self.pending = []

    def _replan(self, done: int) -> None:
        total = self.planner.observe(done, time.perf_counter() - self.t_start)
        if total is None:
            return
        self.plans += 1
        if self.world > 1:  # every process follows the first one's clock
            t = torch.tensor([total], device=self.device)
            dist.broadcast(t, 0)
            total = self.planner.total = int(t.item())
        s = self.cfg.schedule
        changes = {"iterations": total}
        if s.scheduler == "wsd":  # in the cooldown: its start stays, its length follows the clock
            changes["wsd_fract_decay"] = self.planner.fract_for(total)
        warmup = warmup_for(s.warmup_steps, total)
        if warmup != s.warmup_steps:
            changes["warmup_steps"] = warmup
            self._log(
                f"warmup {s.warmup_steps} steps does not fit the {total} steps planned for "
                f"--minutes {s.minutes:g}: scaled to {warmup} (a tenth of the run)"
            )
        if any(getattr(s, k) != v for k, v in changes.items()):
            self.cfg = self.cfg.with_(**changes)
            self.end = total
            if self.bar is not None:
                self.bar.total = total
                self.bar.refresh()

    def _evaluate(self, done: int) -> None:
        batches, autocast = self.eval_set, self.session.autocast
        rec = {"kind": "eval", "step": done, "time_s": round(time.perf_counter() - self.t_start, 4)}
        rec["val_loss"] = self.session.evaluate(batches)
        for name, weights in self.windows.averages(self.cfg.averaging.wa_sweep_horizon).items():
            old = swap_in(self.raw, weights)
            rec[f"val_loss_{name}"] = evaluate(self.raw, batches, autocast)
            swap_in(self.raw, old)
        self.last_eval = rec
        if self.master:
            self.metrics.write(rec)
            extra = "".join(f" | {k[9:]} {v:.4f}" for k, v in rec.items() if k[:9] == "val_loss_")
            self._log(f"eval step {done} | val loss {rec['val_loss']:.4f}{extra}")

    def _save(self, path: str, done: int, same: str | None = None) -> str | None:
        """Checkpoint step `done` into `path`; `same`: a file already holding it (linked)."""
        if not self.master:
            return None
        if same is not None:
            return ckpt_io.save_copy(same, path)
        self.metrics.sync()  # every step the checkpoint covers is on disk before it
        payload = {
            "model": self.raw.state_dict(),
            "optimizer": self.opt.state_dict(),
            "averager": self.windows.state_dict(),
            "rng": ckpt_io.rng_state(),
            "step": done,
            "data_step": self.sampler.step,
            "config": self.cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
        }
        if self.session.scaler is not None:
            payload["scaler"] = self.session.scaler.state_dict()
        return ckpt_io.save(path, payload)

    # ----------------------------------------------------------------------------------- output
    def _open_outputs(self) -> None:
        if not self.master:
            return
        cfg, out = self.cfg, self.cfg.io.out
        info = {"config": cfg.to_dict(), "model": self.model_cfg.to_dict(), "params": self.n_params}
        info["effective"] = self.effective()
        logger = rundir.run_logger(cfg, out, info, resume=self.resume)  # may fail: files after it
        rundir.write_json(f"{out}/config.json", info)
        truncate = self.step if self.start is not None else None
        self.metrics = rundir.MetricsLog(out, truncate_after=truncate, logger=logger)
        if cfg.averaging.wa_save_windows and cfg.averaging.weight_average:
            warn_window_files(cfg.averaging, self.n_params, self.step, self.end, out)
        self._log(f"run {out} | {self.n_params:,} params | {self.session.describe()}")
        if self.device.type == "cpu" and self.n_params * self.end > CPU_WORK_NOTE:
            self._log(
                f"note: {self.n_params / 1e6:.0f}M parameters for {self.end} steps on a CPU "
                f"will take long; --preset tiny (or small) is a CPU-sized model"
            )
        if sys.stderr.isatty() and not cfg.io.no_progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.end, initial=self.step, file=sys.stderr, leave=False)

    def _log(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def effective(self) -> dict:
        """What actually ran (the config holds what was asked for)."""
        return {
            "kernels": self.kernels,
            "dtype": self.dtype,
            "device": self.device_name,
            "world_size": self.world,
            "threads": self.session.threads,
            "compile_mode": self.cfg.runtime.compile_mode if self.cfg.runtime.compile else None,
            "kernels_auto": self.session.kernels_auto,
        }

    # ----------------------------------------------------------------------------------- finish
    def finish(self) -> dict:
        summary = rundir.summary_of(self, time.perf_counter() - self.t_start)
        if self.master:
            self.metrics.close()
            rundir.write_json(f"{self.cfg.io.out}/summary.json", summary)
        rundir.release(self.cfg.io.out)
        return summary


def run(
    cfg: TrainConfig,
    *,
    start: dict | None = None,
    save_at: frozenset[int] = frozenset(),
    resume: bool = False,
) -> dict:
    """Train per `cfg`, optionally from checkpoint payload `start` (`resume`: continuing the same
    run, not branching from it); returns the summary dict."""
    t = Trainer(cfg, start=start, save_at=save_at, resume=resume)
    created = not os.path.exists(cfg.io.out)
    try:
        t.setup()
        if start is not None:
            t.restore(start)
        t.train()
    except BaseException:
        rundir.release(cfg.io.out)
        if created:  # a failed start leaves no empty folder behind
            rundir.remove_if_empty(cfg.io.out)
        raise
    finally:
        if t.metrics is not None and not t.metrics.fh.closed:
            t.metrics.sync()
    return t.finish()
