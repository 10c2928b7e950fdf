"""The training loop: schedule, steps, averages, evals, checkpoints, logs; resume and cooldowns.

`run(args)` trains one run described by the CLI namespace. A resumed run and a cooldown branch are
the same loop started from a checkpoint, so "10 steps + checkpoint + 10 steps" and "a cooldown
branched from a constant run" replay exactly the updates of a straight run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from model.config import PRESETS, ModelConfig
from train import checkpoint as ckpt_io
from train.averaging import WeightAverager, swap_in
from train.data import Sampler, get_data
from train.optim import build_optimizer
from train.schedules import lr_factor, wsd_boundaries
from train.step import evaluate, train_step

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED_DEFAULT_CFG = ModelConfig(n_layer=24, n_embd=768, n_head=12, tie_embeddings=True)


class TrainError(ValueError):
    """A run that cannot start; one line for the user."""


# ----------------------------------------------------------------------------- setup helpers


def model_config(a: argparse.Namespace, data_vocab: int) -> ModelConfig:
    if a.preset is not None:
        if a.preset not in PRESETS:
            raise TrainError(f"unknown preset {a.preset!r}; choose from {', '.join(PRESETS)}")
        base = PRESETS[a.preset]
    else:
        base = SEED_DEFAULT_CFG
    changes = {
        k: getattr(a, k)
        for k in ("n_layer", "n_embd", "n_head", "vocab_size", "sequence_length")
        if getattr(a, k) is not None
    }
    changes["kernels"] = a.kernels
    cfg = base.replace(**changes)  # ModelConfig validates (e.g. width divisible by heads)
    if data_vocab > cfg.vocab_size:
        raise TrainError(
            f"data needs vocab {data_vocab} but the model has vocab_size {cfg.vocab_size}"
        )
    return cfg


def schedule_kwargs(a: argparse.Namespace) -> dict:
    return dict(
        scheduler=a.scheduler,
        iterations=a.iterations,
        warmup_steps=a.warmup_steps,
        wsd_fract_decay=a.wsd_fract_decay,
        decay_type=a.decay_type,
        wsd_final_lr_scale=a.wsd_final_lr_scale,
        cos_inf_steps=a.cos_inf_steps,
    )


def count_params(cfg: ModelConfig) -> int:
    try:
        from model.costs import num_params

        return int(num_params(cfg))
    except ImportError:
        from model.transformer import Transformer

        return sum(p.numel() for p in Transformer(cfg).parameters())


def resolve_warmup(a: argparse.Namespace, cfg: ModelConfig, world: int) -> None:
    """`--warmup-tokens params`: warmup tokens = parameter count (Porian, spec §2.3)."""
    if a.warmup_tokens is None:
        return
    if a.warmup_tokens != "params":
        try:
            tokens = int(float(a.warmup_tokens))
        except ValueError:
            msg = f"--warmup-tokens must be 'params' or a number, got {a.warmup_tokens!r}"
            raise TrainError(msg) from None
    else:
        tokens = count_params(cfg)
    per_step = a.batch_size * a.acc_steps * world * cfg.sequence_length
    a.warmup_steps = math.ceil(tokens / per_step)


def flops_per_step(cfg: ModelConfig, global_batch: int, n_params: int) -> float:
    try:
        from model.costs import train_flops

        return float(train_flops(cfg, global_batch)["exact"])
    except ImportError:  # costs not built yet: the 6ND estimate
        return 6.0 * n_params * global_batch * cfg.sequence_length


def mfu_of(tok_s: float, cfg: ModelConfig, device_name: str) -> float | None:
    try:
        from model.costs import mfu

        return mfu(tok_s, cfg, device_name)
    except ImportError:
        return None


def init_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world, device); DDP when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda requested but CUDA is not available")
    if world > 1:
        if device_arg.startswith("cuda"):
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    else:
        device = torch.device(device_arg)
    return rank, world, device


def _fmt_tok(x: float) -> str:
    return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


# ----------------------------------------------------------------------------- one run


def run(
    a: argparse.Namespace,
    *,
    start: dict | None = None,
    stop_at: int | None = None,
    save_at: frozenset[int] = frozenset(),
) -> dict:
    """Train per `a`, optionally from checkpoint payload `start`; returns the summary dict."""
    from model.transformer import Transformer

    rank, world, device = init_distributed(a.device)
    master = rank == 0
    train_tok, val_tok, data_vocab = get_data(a.data, uint32=a.data_dtype == "uint32")
    cfg = model_config(a, data_vocab)
    resolve_warmup(a, cfg, world)
    sk = schedule_kwargs(a)
    lr_factor(0, **sk)  # validates the schedule before any work
    end = a.iterations if stop_at is None else stop_at

    if device.type == "cuda":  # TF32 as in the seed: fp32 params, tensor-core matmuls
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    raw = Transformer(cfg).to(device)
    # Averages are updated by FusedAdamW in the same kernel pass as the step: SWA when asked for
    # (an EMA asked for beside it then runs as a separate pass in WeightAverager), else EMA.
    fused_avg = "swa" if a.weight_average else ("ema" if a.exponential_moving_average else None)
    opt = build_optimizer(
        raw,
        lr=a.lr,
        weight_decay=a.weight_decay,
        beta1=a.beta1,
        beta2=a.beta2,
        average=fused_avg,
        wa_interval=a.wa_interval if fused_avg == "swa" else a.ema_interval,
        wa_horizon=a.wa_horizon,
        ema_decay=a.ema_decay,
    )
    sampler = Sampler(
        train_tok, a.batch_size, cfg.sequence_length, seed=a.data_seed, rank=rank, world_size=world
    )
    step0 = 0
    if start is not None:
        try:
            raw.load_state_dict(start["model"])
            osd = start["optimizer"]
            # A branch may turn averaging on (or change its settings): this run's averaging
            # hyperparameters win over the checkpoint's, and a missing average starts at the weights.
            had_avg = any("avg" in st for st in osd.get("state", {}).values())
            for g_saved, g_now in zip(osd.get("param_groups", []), opt.param_groups):
                for key in ("average", "average_interval", "average_horizon", "ema_decay"):
                    g_saved[key] = g_now[key]
            opt.load_state_dict(osd)
            if fused_avg is not None and not had_avg:
                with torch.no_grad():
                    for p in raw.parameters():
                        opt.averaged(p).copy_(p)
        except (RuntimeError, KeyError, ValueError) as e:
            msg = f"checkpoint does not fit this run: {str(e).splitlines()[0]}"
            raise TrainError(msg) from None
        ckpt_io.set_rng_state(start["rng"])
        step0 = int(start["step"])
        sampler.set_step(int(start["data_step"]))
    averager = WeightAverager(
        raw,
        swa=a.weight_average,
        interval=a.wa_interval,
        horizon=a.wa_horizon,
        max_windows=a.max_num_wa_sweeps if a.wa_sweep_horizon else 1,
        ema=a.exponential_moving_average,
        ema_decay=a.ema_decay,
        ema_interval=a.ema_interval,
        optimizer=opt,
    )
    if averager.enabled and start is not None:
        # Averages continue from the checkpoint when it has them; a cooldown that turns averaging on
        # for the first time starts them from the branch weights instead.
        averager.count = step0
        sd = start.get("averager") or {}
        has_swa = not a.weight_average or averager.swa_fused or sd.get("window")
        has_ema = not a.exponential_moving_average or averager.ema_fused or sd.get("ema")
        has = bool(sd) and has_swa and has_ema
        if has:
            averager.load_state_dict(sd)

    model = raw
    if a.compile:
        model = torch.compile(model)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    autocast = DTYPES[a.dtype] if device.type == "cuda" else None
    global_batch = a.batch_size * a.acc_steps * world
    tokens_per_step = global_batch * cfg.sequence_length
    n_params = sum(p.numel() for p in raw.parameters())
    fps = flops_per_step(cfg, global_batch, n_params)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    os.makedirs(a.out, exist_ok=True) if master else None
    if master:
        with open(os.path.join(a.out, "config.json"), "w") as fh:
            info = {"args": vars(a), "model": cfg.to_dict(), "params": n_params}
            info["world_size"] = world
            json.dump(info, fh, indent=1)
    metrics = open(os.path.join(a.out, "metrics.jsonl"), "a") if master else None
    if master and a.wa_save_windows and a.weight_average:
        n_files = max(0, end // a.wa_horizon - step0 // a.wa_horizon)
        mb = n_params * 4 / 2**20  # windows are stored in fp32
        print(
            f"warning: --wa-save-windows writes {n_files} window file(s) of {mb:.1f} MB each "
            f"({n_files * mb / 1024:.2f} GB) to {os.path.join(a.out, 'avgs')}",
            file=sys.stderr,
        )
    val_sampler = Sampler(val_tok, a.batch_size, cfg.sequence_length, seed=a.data_seed)

    def run_eval(step: int) -> dict:
        val_sampler.set_step(0)  # the same batches every eval (seed §1.8)
        n = min(a.eval_batches, val_sampler.steps_per_epoch)
        batches = [val_sampler.next_batch(device) for _ in range(n)]
        rec = {"kind": "eval", "step": step, "val_loss": evaluate(raw, batches, autocast)}
        for name, weights in averager.averages(a.wa_sweep_horizon).items():
            old = swap_in(raw, weights)
            rec[f"val_loss_{name}"] = evaluate(raw, batches, autocast)
            swap_in(raw, old)
        return rec

    def save_ckpt(path: str, step: int) -> None:
        payload = {
            "model": raw.state_dict(),
            "optimizer": opt.state_dict(),
            "averager": averager.state_dict(),
            "rng": ckpt_io.rng_state(),
            "step": step,
            "data_step": sampler.step,
            "args": vars(a),
            "schedule": sk,
            "model_config": cfg.to_dict(),
        }
        ckpt_io.save(path, payload)

    bar = None
    if master and sys.stderr.isatty() and not a.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=end, initial=step0, file=sys.stderr, leave=False)

    def log(msg: str) -> None:
        (bar.write if bar else lambda s: print(s, file=sys.stderr, flush=True))(msg)

    last_eval: dict = {}
    t_start = time.perf_counter()
    model.train()
    for step in range(step0, end):
        lr = a.lr * lr_factor(step, **sk)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        micro = [sampler.next_batch(device) for _ in range(a.acc_steps)]
        stats = train_step(model, opt, micro, lr=lr, grad_clip=a.grad_clip, autocast_dtype=autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if not math.isfinite(stats.loss):
            raise TrainError(f"loss became {stats.loss} at step {step + 1}; lower --lr")
        window = averager.update(raw) if averager.enabled else None
        done = step + 1
        tok_s = tokens_per_step / dt
        m = mfu_of(tok_s, cfg, device_name)
        if master:
            rec = {
                "kind": "train",
                "step": done,
                "loss": stats.loss,
                "lr": lr,
                "grad_norm": stats.grad_norm,
                "step_ms": dt * 1e3,
                "tokens_per_s": tok_s,
                "mfu": m,
            }
            metrics.write(json.dumps(rec) + "\n")
            if window is not None and a.wa_save_windows:
                os.makedirs(os.path.join(a.out, "avgs"), exist_ok=True)
                averager.save_window(os.path.join(a.out, "avgs", f"{window}.pt"))
            if bar:
                bar.update(1)
            if a.log_interval and (done % a.log_interval == 0 or done == end):
                mfu_s = "n/a" if m is None else f"{100 * m:.0f}%"
                log(
                    f"step {done}/{a.iterations} | loss {stats.loss:.2f} | lr {lr:.1e} | "
                    f"{dt * 1e3:.1f} ms | {_fmt_tok(tok_s)} tok/s | MFU {mfu_s}"
                )
        if (a.eval_interval and done % a.eval_interval == 0) or done == end:
            last_eval = run_eval(done)
            if master:
                metrics.write(json.dumps(last_eval) + "\n")
                metrics.flush()
                extra = "".join(
                    f" | {k[9:]} {v:.4f}" for k, v in last_eval.items() if k.startswith("val_loss_")
                )
                log(f"eval step {done} | val loss {last_eval['val_loss']:.4f}{extra}")
        if master:
            if a.latest_ckpt_interval and done % a.latest_ckpt_interval == 0:
                save_ckpt(os.path.join(a.out, "latest"), done)
            perm = a.permanent_ckpt_interval
            if (perm and done % perm == 0) or done in save_at:
                save_ckpt(os.path.join(a.out, "ckpts", str(done)), done)
    if bar:
        bar.close()
    wall = time.perf_counter() - t_start
    summary = {
        "final_step": end,
        "iterations": a.iterations,
        "tokens": end * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "flops_per_step": fps,
        "flops_this_run": (end - step0) * fps,
        "params": n_params,
        "wall_s": wall,
        "device": device_name,
        "world_size": world,
        "warmup_steps": a.warmup_steps,
        **{k: v for k, v in last_eval.items() if k.startswith("val_loss")},
    }
    if master:
        metrics.close()
        with open(os.path.join(a.out, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
    return summary


# ----------------------------------------------------------------------------- cooldowns


def branch_step(iterations: int, fract: float) -> int:
    return wsd_boundaries(iterations, fract)[0]


def cooldown_args(parent: dict, explicit: dict) -> argparse.Namespace:
    """The parent's args with this command line's explicit flags on top, as a WSD run."""
    a = argparse.Namespace(**{**parent, **explicit})
    a.scheduler = "wsd"
    a.resume_from = None
    a.cooldown_from = None
    a.cooldown_targets = None
    a.warmup_tokens = None  # already resolved into warmup_steps by the parent
    return a


def check_branch(payload: dict, a: argparse.Namespace) -> None:
    want = branch_step(a.iterations, a.wsd_fract_decay)
    have = int(payload["step"])
    if have != want:
        raise TrainError(
            f"checkpoint is at step {have} but --iterations {a.iterations} with --wsd-fract-decay "
            f"{a.wsd_fract_decay} branches at step {want} (= T - int(f*T))"
        )
    p = payload["args"]
    parent_kw = schedule_kwargs(argparse.Namespace(**p))
    if p["scheduler"] not in ("wsd", "constant") or lr_factor(have - 1, **parent_kw) != 1.0:
        raise TrainError("cooldowns must branch from a constant-LR (WSD stable phase) checkpoint")


def cooldown_from(payload: dict, explicit: dict) -> dict:
    a = cooldown_args(payload["args"], explicit)
    check_branch(payload, a)
    if "out" not in explicit:
        name = f"cooldown_{a.iterations}_{a.decay_type}_{a.wsd_fract_decay:g}"
        a.out = os.path.join(payload["args"]["out"], name)
    return run(a, start=payload)


def cooldown_targets(a: argparse.Namespace, targets: list[int]) -> list[dict]:
    """One stable run to the largest branch point, a cooldown per target, one comparison table."""
    targets = sorted(set(targets))
    branches = {t: branch_step(t, a.wsd_fract_decay) for t in targets}
    if min(branches.values()) <= 0:
        raise TrainError("a cooldown target is too short: its branch step is 0")
    stable = argparse.Namespace(**vars(a))
    stable.scheduler = "wsd"
    stable.wsd_fract_decay = 0.0  # constant after warmup: the stable phase of every target
    stable.iterations = max(branches.values())
    stable.cooldown_targets = None
    stable_summary = run(stable, save_at=frozenset(branches.values()))
    base = vars(stable).copy()
    rows = []
    fps = stable_summary["flops_per_step"]
    for t in targets:
        payload = ckpt_io.load(os.path.join(a.out, "ckpts", str(branches[t])))
        over = {
            "iterations": t,
            "wsd_fract_decay": a.wsd_fract_decay,
            "decay_type": a.decay_type,
            "wsd_final_lr_scale": a.wsd_final_lr_scale,
            "out": os.path.join(a.out, f"cooldown_{t}"),
        }
        ca = cooldown_args(base, over)
        check_branch(payload, ca)
        s = run(ca, start=payload)
        avg = {k: v for k, v in s.items() if k.startswith("val_loss_")}
        best = min(avg, key=avg.get) if avg else None
        rows.append(
            {
                "target_steps": t,
                "target_tokens": t * stable_summary["tokens_per_step"],
                "branch_step": branches[t],
                "val_loss": s.get("val_loss"),
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
        path = os.path.join(a.out, "cooldown_table.csv")
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
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
    return rows
