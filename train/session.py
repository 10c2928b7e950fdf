"""One builder of a run, for `train` and for the sweep worker: a benchmarked step is the step that
trains.

`Session.build(cfg)` turns a TrainConfig into everything a training step needs: the device (and a
process group under torchrun), the CPU thread policy, precision flags (TF32), seeds, the effective
kernels and dtype, the data, the ModelConfig, the model (compiled or not), the optimizer, the loss
scaler and the samplers. `Session.step(lr)` is the training step, `Session.evaluate(batches)` the
evaluation. `train.loop.Trainer` adds schedule, logging, averages and checkpoints around it;
`bench.worker.run` adds timing windows and telemetry. Neither builds anything itself.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from core import UserError
from model.config import KERNEL_OPS, ModelConfig, kernel_ops, parse_kernels
from model.costs import num_params
from train.config import TrainConfig, model_config, resolve_warmup
from train.cpumem import keep_freed_memory

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------- device
def resolve_device(device_arg: str, world: int, local_rank: int) -> torch.device:
    """The torch.device of this process; every CUDA spelling (cuda, cuda:N) gets an index, which
    `torch.cuda.set_device` requires. Under torchrun (world > 1) the local rank picks the GPU."""
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg == "cpu":
        return torch.device("cpu")
    if not (device_arg == "cuda" or device_arg.startswith("cuda:")):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {device_arg!r}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device_arg} requested but CUDA is not available")
    n = torch.cuda.device_count()
    if world > 1:
        index = local_rank
    elif device_arg == "cuda":
        index = torch.cuda.current_device()
    else:
        text = device_arg[5:]
        if not text.isdigit():
            raise UserError(f"--device {device_arg}: N in cuda:N must be a GPU index")
        index = int(text)
    if index >= n:
        raise UserError(f"--device {device_arg}: this machine has {n} CUDA device(s)")
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def init_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world, device); a process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_arg, world, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        keep_freed_memory()  # steady CPU steps: no page faults per step (train/cpumem.py)
    return rank, world, device


def apply_threads(cfg: TrainConfig, device: torch.device) -> int:
    """Set torch's CPU threads by the one policy of train and bench: --threads, else 1 on a CPU
    (with several, BLAS threads spin-wait whenever the machine is shared: a small matmul measured
    50x slower on a loaded 2-core box), else torch's default. Returns the count in force."""
    threads = cfg.runtime.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def set_precision(device: torch.device) -> None:
    """TF32 as in the seed: fp32 parameters, tensor-core matmuls (CUDA only)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def interpreting() -> bool:
    """Whether Triton runs on the CPU (TRITON_INTERPRET=1, read as Triton itself reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def effective_kernels(requested: str, device: torch.device) -> str:
    """What runs: the requested ops of ours on CUDA (or on the CPU under TRITON_INTERPRET=1; auto:
    all of them, until `measured_kernels` decides on CUDA), the torch ops else."""
    triton_runs = device.type == "cuda" or interpreting()
    if not triton_runs:
        return "torch"
    return "triton" if requested == "auto" else parse_kernels(requested)


def effective_dtype(requested: str, device: torch.device) -> str:
    """Autocast runs on CUDA only: a CPU run is float32 whatever was asked."""
    return requested if device.type == "cuda" else "float32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------- data
def data_path(cfg: TrainConfig) -> str | None:
    """--data, or --dataset as a prepared directory or a NAME under --datasets-dir."""
    d = cfg.data
    if d.dataset is None:
        return d.data
    if os.path.isdir(d.dataset):
        return d.dataset
    cand = os.path.join(d.datasets_dir, d.dataset)
    if os.path.isdir(cand):
        return cand
    raise UserError(
        f"dataset {d.dataset!r} not found (no directory {d.dataset} or {cand}); "
        f"make it with `train prepare`"
    )


def load_data(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int]:
    from train.data import get_data

    train_tok, val_tok, vocab = get_data(data_path(cfg), uint32=cfg.data.data_dtype == "uint32")
    if cfg.data.data_in_ram:
        train_tok, val_tok = np.array(train_tok), np.array(val_tok)
    return train_tok, val_tok, vocab


def vocab_from_data(cfg: TrainConfig) -> bool:
    """Whether the run's data names its vocabulary (a prepared folder's meta.json)."""
    from train.data import data_meta

    return data_meta(data_path(cfg)) is not None


# ------------------------------------------------------------------------------------ session
@dataclass
class Session:
    """A built run: what the training step and the evaluation need, nothing about files."""

    cfg: TrainConfig  # warmup resolved to steps
    model_cfg: ModelConfig  # as built (effective kernels)
    rank: int
    world: int
    device: torch.device
    kernels: str
    dtype: str
    threads: int
    raw: torch.nn.Module  # the module (its state dict is the checkpoint's)
    model: torch.nn.Module  # what the step calls: `raw`, or torch.compile(raw)
    opt: Any
    scaler: Any
    sampler: Any
    val_tokens: Any  # the held-out token array
    kernels_auto: dict | None = None  # --kernels auto on CUDA: what was measured (autokernels)

    @classmethod
    def build(cls, cfg: TrainConfig) -> Session:
        """Build the run of `cfg`; every check that can fail runs before the model is made."""
        from model.transformer import Transformer
        from train.data import Sampler
        from train.optim import optimizer_for

        rank, world, device = init_distributed(cfg.runtime.device)
        threads = apply_threads(cfg, device)
        set_precision(device)
        kernels = effective_kernels(cfg.runtime.kernels, device)
        dtype = effective_dtype(cfg.runtime.dtype, device)
        train_tok, val_tok, vocab = load_data(cfg)
        model_cfg = model_config(cfg, vocab, kernels, from_data=vocab_from_data(cfg))
        kernels, auto = measured_kernels(cfg, model_cfg, kernels, dtype, device, world)
        model_cfg = model_cfg.replace(kernels=kernels)
        cfg = resolve_warmup(cfg, model_cfg, world)
        seed_everything(cfg.runtime.seed)
        check_fits(model_cfg, device)  # a nonsense size is one line, not an allocator error
        raw = Transformer(model_cfg).to(device)
        if world > 1:  # the same start on every process (what DDP's constructor does)
            for p in raw.parameters():
                dist.broadcast(p.data, 0)
        opt = optimizer_for(raw, cfg)
        if hasattr(opt, "prepare_grads"):
            opt.prepare_grads()  # backward accumulates into the flat buffers from step 1
        scaler = _loss_scaler(dtype, opt, device)
        model = raw
        if cfg.runtime.compile:
            mode = None if cfg.runtime.compile_mode == "default" else cfg.runtime.compile_mode
            model = torch.compile(raw, mode=mode)
        d = cfg.data
        sampler = Sampler(
            train_tok, d.batch_size, model_cfg.sequence_length, seed=d.data_seed, rank=rank,
            world_size=world,
        )  # fmt: skip
        return cls(
            cfg=cfg,
            model_cfg=model_cfg,
            rank=rank,
            world=world,
            device=device,
            kernels=kernels,
            dtype=dtype,
            threads=threads,
            raw=raw,
            model=model,
            opt=opt,
            scaler=scaler,
            sampler=sampler,
            val_tokens=val_tok,
            kernels_auto=auto,
        )

    # ------------------------------------------------------------------------------- derived
    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def autocast(self):
        return DTYPES[self.dtype]

    @property
    def fused(self) -> bool:
        """FusedAdamW: clipping, unscaling and averaging happen inside its update."""
        return hasattr(self.opt, "grad_buffers")

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over every process."""
        return self.cfg.global_batch(self.world) * self.model_cfg.sequence_length

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else "cpu"

    def describe(self) -> str:
        """The start line both train and the sweep worker print: what actually runs."""
        return (
            f"device {self.device_name} x{self.world} | kernels {self.kernels} | "
            f"dtype {self.dtype} | threads {self.threads}"
        )

    # ---------------------------------------------------------------------------------- work
    def step(self, lr: float):
        """One optimizer step at `lr` on the next micro-batches; returns `train.step.StepStats`
        (loss and grad norm stay on the device)."""
        from train.step import train_step

        micro = [self.sampler.next_batch(self.device) for _ in range(self.cfg.data.acc_steps)]
        return train_step(
            self.model,
            self.opt,
            micro,
            lr=lr,
            grad_clip=None if self.fused else self.cfg.optim.grad_clip,
            autocast_dtype=self.autocast,
            scaler=self.scaler,
            world_size=self.world,
        )

    def val_batches(self, batch_size: int, n_batches: int, seed: int, *, shard: bool = False):
        """`n_batches` held-out batches from the start of a fixed-seed order (the same every
        call); `shard` splits the order over the processes."""
        from train.data import Sampler

        seq = self.model_cfg.sequence_length
        rank, world = (self.rank, self.world) if shard else (0, 1)
        vs = Sampler(
            self.val_tokens, batch_size, seq, seed=seed, rank=rank, world_size=world, split="val"
        )
        n = min(n_batches, vs.steps_per_epoch)
        return [vs.next_batch(self.device) for _ in range(n)]

    def evaluate(self, batches) -> float:
        """Mean loss of the raw weights (schedule-free: its averaged point) over `batches`."""
        from train.step import evaluate

        return evaluate(self.raw, batches, self.autocast, optimizer=self.opt)


def measured_kernels(cfg: TrainConfig, model_cfg: ModelConfig, kernels: str, dtype: str,
                     device: torch.device, world: int) -> tuple[str, dict | None]:  # fmt: skip
    """--kernels auto on CUDA: per op, ours or torch's, as a measurement at this run's shapes
    picks (`train.autokernels`), rank 0's choice on every process; anything else: `kernels` as
    resolved."""
    if cfg.runtime.kernels != "auto" or device.type != "cuda" or model_cfg.arch != "llama":
        return kernels, None
    from train import autokernels

    rows = cfg.data.batch_size * model_cfg.sequence_length
    mode = cfg.runtime.compile_mode if cfg.runtime.compile else None
    choice, record = autokernels.choose(model_cfg, rows, DTYPES[dtype], device, mode)
    if world > 1:  # one bit per op: every process builds the same model
        bits = sum(1 << i for i, op in enumerate(KERNEL_OPS) if op in kernel_ops(choice))
        t = torch.tensor([bits], dtype=torch.int32, device=device)
        dist.broadcast(t, 0)
        bits = int(t.item())
        ops = [op for i, op in enumerate(KERNEL_OPS) if bits >> i & 1]
        choice = parse_kernels("+".join(ops)) if ops else "torch"
        record["kernels"] = choice
    return choice, record


def _loss_scaler(dtype: str, opt, device: torch.device):
    if dtype != "float16":
        return None
    if not hasattr(opt, "grad_buffers"):
        raise UserError("--dtype float16 needs --opt adamw (FusedAdamW unscales the grads)")
    from kernels.adamw import DynamicLossScaler

    return DynamicLossScaler(device)


def check_fits(model_cfg: ModelConfig, device: torch.device) -> None:
    """UserError when the model's weights, gradients and AdamW moments (16 bytes a parameter, a
    lower bound) exceed the memory of `device` (a torch.device), before anything is allocated."""
    need = 16 * num_params(model_cfg)
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device.index or 0).total_memory
        where = f"GPU {device.index or 0}"
    else:
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (OSError, ValueError, AttributeError):
            return  # no way to tell on this system
        where = "this machine's RAM"
    if need > have:
        raise UserError(
            f"the model has {need // 16:,} parameters: {need / 2**30:,.0f} GiB for weights, "
            f"gradients and AdamW moments alone, more than {where} ({have / 2**30:,.0f} GiB); "
            "check --vocab-size, --n-embd, --n-layer"
        )
