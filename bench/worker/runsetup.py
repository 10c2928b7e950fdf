"""Build one sweep run inside the worker: device, process group, model, optimizer, data.

Everything comes from the trainer (`train.optim.optimizer_for`, `train.data`, `train.step`) and
from the run's `TrainConfig`, so a benchmarked step is the step that trains.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

from bench.sweep.options import VAL_TOKENS

VAL_BATCH = 16  # sequences per validation batch
VAL_SEED = 7919  # one validation sample for every config (not the training data seed)


@dataclass
class Run:
    spec: dict
    tcfg: Any
    cfg: Any  # ModelConfig as built (effective kernels)
    device: Any
    device_name: str
    kernels: str
    dtype: str
    world: int
    rank: int
    model: Any
    step_model: Any
    opt: Any
    scaler: Any
    autocast: Any
    sampler: Any
    val_batches: list = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over every process."""
        d = self.tcfg.data
        return d.batch_size * d.acc_steps * self.world * self.cfg.sequence_length

    def launch(self, step: int, factor: float):
        """Issue one training step at the scheduled LR; the loss stays on the device."""
        from train.step import train_step

        mbs = [self.sampler.next_batch(self.device) for _ in range(self.tcfg.data.acc_steps)]
        st = train_step(
            self.step_model,
            self.opt,
            mbs,
            lr=self.tcfg.schedule.lr * factor,
            autocast_dtype=self.autocast,
            scaler=self.scaler,
            world_size=self.world,
        )
        return st.loss

    def read(self, losses: list) -> list[float]:
        """The one device read of a window (after its end event): losses as floats."""
        import torch

        if not losses:
            return []
        if isinstance(losses[0], torch.Tensor):
            return [float(x) for x in torch.stack([x.float() for x in losses]).tolist()]
        return [float(x) for x in losses]

    def agree(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (decisions that must match for the collectives)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.tolist()

    def evaluate(self) -> float:
        from train.step import evaluate

        return evaluate(self.step_model, self.val_batches, self.autocast, optimizer=self.opt)

    def telemetry(self):
        from bench.worker.telemetry import Telemetry

        if not self.cuda or self.rank != 0:
            return Telemetry(None)
        index = self.spec.get("nvml_index")
        gpu = self.spec.get("gpu")
        if index is None and gpu is not None and str(gpu).isdigit():
            index = int(gpu)  # NVML numbers GPUs physically, ignoring CUDA_VISIBLE_DEVICES
        return Telemetry(index if index is not None else self.device.index or 0)

    def columns(self, tokens_per_s: float) -> dict:
        """Effective settings, world, memory, MFU and environment columns of the row."""
        import torch

        from bench.envinfo import env_info
        from train import cpumem

        per_device = tokens_per_s / self.world if math.isfinite(tokens_per_s) else math.nan
        mfu = _mfu(per_device, self.cfg, self.device_name, self.dtype)
        out = {
            "device": self.device.type,
            "kernels": self.kernels,
            "dtype": self.dtype,
            "world_size": self.world,
            "dp": self.world,
            "global_batch": self.tcfg.data.batch_size * self.tcfg.data.acc_steps * self.world,
            "threads": torch.get_num_threads(),
            "cpu_affinity": _affinity(),
            "cpu_malloc": cpumem.mode(),
            "mfu": math.nan if mfu is None else mfu,
            "peak_mem_mb": _peak_mem_mb(self.cuda),
        }
        out.update(env_info("cuda" if self.cuda else "cpu"))
        return out


def _mfu(tokens_per_s: float, cfg, device_name: str, dtype: str) -> float | None:
    """Per-device MFU from `model.costs` (its peak table knows GPUs only: None on a CPU)."""
    from model import costs

    if not (device_name and math.isfinite(tokens_per_s)):
        return None
    return costs.mfu(tokens_per_s, cfg, device_name, dtype=dtype)


def _affinity() -> str:
    if not hasattr(os, "sched_getaffinity"):
        return ""
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def _peak_mem_mb(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    import resource  # peak resident set: the closest CPU analogue of peak GPU memory

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _device(name: str, world: int, local_rank: int):
    import torch

    from core import UserError

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name} asked for, but CUDA is not available here")
        dev = torch.device("cuda", local_rank) if world > 1 else torch.device(name)
        torch.cuda.set_device(dev)
        torch.cuda.reset_peak_memory_stats()
        return dev
    return torch.device("cpu")


def _threads_and_affinity(spec: dict, cpu: bool, world: int) -> None:
    import torch

    from train.cpumem import keep_freed_memory

    settings = spec.get("settings") or {}
    if cpu:  # before the model is built: see train/cpumem.py (page faults were the sweep's noise)
        keep_freed_memory()
    threads = settings.get("threads") or (1 if cpu else None)
    # On CPU default to one thread: with several, BLAS threads spin-wait whenever the machine is
    # shared, and a small matmul measured 50x slower on a loaded 2-core box (timings become noise).
    if threads:
        torch.set_num_threads(int(threads))
    if not (cpu and settings.get("pin", True) and world == 1 and hasattr(os, "sched_setaffinity")):
        return
    cores = spec.get("cpu_cores")  # --cpu-cores; else one core per thread, chosen here
    if not cores:
        cores = pin_cores(sorted(os.sched_getaffinity(0)), threads or 1, spec.get("cpu_slot", 0))
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(cores))


def pin_cores(allowed: list[int], threads: int, slot: int) -> list[int]:
    """One core per thread: the last cores of the allowed set (core 0 takes most interrupts),
    shifted by `slot` (the shard index) so that shards on one machine do not share cores."""
    n = max(1, min(threads, len(allowed)))
    slot %= max(1, len(allowed) // n)
    start = len(allowed) - n * (slot + 1)
    return allowed[start : start + n]


def setup(spec: dict, tcfg) -> Run:
    """The run of `spec` (a sweep row + settings) under TrainConfig `tcfg`."""
    import torch
    import torch.distributed as dist

    from bench.sweep.grid import model_config
    from bench.worker.run import effective
    from model.transformer import Transformer
    from train.data import Sampler, get_data
    from train.optim import optimizer_for

    row = spec["row"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev_name, kernels, dtype = effective(row, torch.cuda.is_available())
    device = _device(dev_name, world, int(os.environ.get("LOCAL_RANK", "0")))
    _threads_and_affinity(spec, device.type == "cpu", world)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(tcfg.runtime.seed)
    cfg = model_config(row, kernels=kernels)
    d = tcfg.data
    train_tok, val_tok, vocab = get_data(d.data, uint32=d.data_dtype == "uint32")
    if vocab > cfg.vocab_size:
        from core import UserError

        raise UserError(f"data vocab {vocab} > vocab_size {cfg.vocab_size}")
    model = Transformer(cfg).to(device)
    opt = optimizer_for(model, tcfg)
    if hasattr(opt, "prepare_grads"):
        opt.prepare_grads()
    scaler = None
    if dtype == "float16":
        from kernels import DynamicLossScaler

        scaler = DynamicLossScaler(device)
    step_model = torch.compile(model) if tcfg.runtime.compile else model
    sampler = Sampler(train_tok, d.batch_size, cfg.sequence_length, d.data_seed, rank, world)
    # The val set depends on the sequence length only (fixed batch of VAL_BATCH sequences, fixed
    # seed), so configs that differ in batch size are scored on the same held-out tokens.
    val_tokens = int((spec.get("settings") or {}).get("val_tokens") or VAL_TOKENS)
    val_batch = max(1, min(VAL_BATCH, val_tokens // cfg.sequence_length))
    val = Sampler(val_tok, val_batch, cfg.sequence_length, VAL_SEED, rank, world)
    n_val = max(1, math.ceil(val_tokens / (val_batch * cfg.sequence_length * world)))
    return Run(
        spec=spec,
        tcfg=tcfg,
        cfg=cfg,
        device=device,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        kernels=kernels,
        dtype=dtype,
        world=world,
        rank=rank,
        model=model,
        step_model=step_model,
        opt=opt,
        scaler=scaler,
        autocast={"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype],
        sampler=sampler,
        val_batches=[val.next_batch(device) for _ in range(n_val)],
    )
