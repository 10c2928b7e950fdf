"""What a run is built from: device and process group, effective kernels and dtype, data, the
ModelConfig, the resolved warmup. Pure functions of a TrainConfig; the loop composes them."""

from __future__ import annotations

import dataclasses
import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from core import UserError
from model.config import PRESETS, ModelConfig
from model.costs import num_params
from train.config import TrainConfig
from train.cpumem import keep_freed_memory

# The seed's model when no preset is given (upstream `src/config/base.py` defaults).
SEED_DEFAULT_CFG = ModelConfig(n_layer=24, n_embd=768, n_head=12, tie_embeddings=True)
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def init_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world, device); a process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device_arg} requested but CUDA is not available")
        index = int(device_arg[5:]) if device_arg.startswith("cuda:") else None
        if index is not None and index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise UserError(f"--device {device_arg}: this machine has {n} CUDA device(s)")
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
    if device.type == "cpu":
        keep_freed_memory()  # steady CPU steps: no page faults per step (train/cpumem.py)
    return rank, world, device


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def effective_kernels(requested: str, device: torch.device) -> str:
    """What runs: Triton on CUDA (or on the CPU under TRITON_INTERPRET=1), the torch ops else."""
    triton_runs = device.type == "cuda" or interpreting()
    if requested == "auto":
        return "triton" if triton_runs else "torch"
    return "triton" if requested == "triton" and triton_runs else "torch"


def effective_dtype(requested: str, device: torch.device) -> str:
    """Autocast runs on CUDA only: a CPU run is float32 whatever was asked."""
    return requested if device.type == "cuda" else "float32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def model_config(
    cfg: TrainConfig, data_vocab: int, kernels: str = "torch", *, from_data: bool = False
) -> ModelConfig:
    """The ModelConfig of a run: preset (or the seed's default) with the explicit flags on top.

    `from_data` (the data has a meta.json): without --vocab-size the model's vocabulary is the
    data's (`data_vocab`, already rounded up to a multiple of 64), whatever the preset's is.
    """
    m = cfg.model
    if m.preset is not None:
        if m.preset not in PRESETS:
            raise UserError(f"unknown preset {m.preset!r}; choose from {', '.join(PRESETS)}")
        base = PRESETS[m.preset]
    else:
        base = SEED_DEFAULT_CFG
    names = ("n_layer", "n_embd", "n_head", "vocab_size", "sequence_length", "multiple_of")
    changes = {k: getattr(m, k) for k in names + ("init_std", "dropout", "bias")}
    changes["norm_eps"] = m.rmsnorm_eps
    changes = {k: v for k, v in changes.items() if v is not None}
    if from_data and m.vocab_size is None:
        changes["vocab_size"] = data_vocab
    if m.arch == "base":
        changes["arch"] = "gpt2"
        if m.mlp_dim_exp_factor != 1.0:
            width = changes.get("n_embd", base.n_embd)
            changes["ffn_hidden"] = int(m.mlp_dim_exp_factor * 4 * width)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    missing = sorted(set(changes) - known)
    if missing:
        raise UserError(f"this model build has no {', '.join(missing)} setting")
    mcfg = base.replace(kernels=kernels, **changes)  # ModelConfig validates its fields
    if data_vocab > mcfg.vocab_size:
        raise UserError(
            f"data needs vocab {data_vocab} but the model has vocab_size {mcfg.vocab_size}"
        )
    return mcfg


def tokens_per_step(cfg: TrainConfig, mcfg: ModelConfig, world: int) -> int:
    return cfg.data.batch_size * cfg.data.acc_steps * world * mcfg.sequence_length


def resolve_warmup(cfg: TrainConfig, mcfg: ModelConfig, world: int) -> TrainConfig:
    """A config whose warmup is in steps: `--warmup-tokens params` means warmup tokens = parameter
    count (Porian et al. 2024, arXiv:2406.19146, §3), a number means that many tokens."""
    w = cfg.schedule.warmup_tokens
    if w is None:
        return cfg
    tokens = num_params(mcfg) if w == "params" else float(w)
    steps = math.ceil(tokens / tokens_per_step(cfg, mcfg, world))
    return cfg.with_(warmup_steps=steps, warmup_tokens=None)
