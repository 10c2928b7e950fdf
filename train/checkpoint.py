"""Checkpoints: model, optimizer (with its averages), averager, RNG states, data position, args.

Written atomically (temporary file + os.replace) so a crash mid-write never leaves a truncated
`ckpt.pt`. RNG states are stored as plain lists/tensors so `torch.load(weights_only=True)` reads
them: no pickle of arbitrary objects.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

CKPT_NAME = "ckpt.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run; one line for the user."""


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            kind,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str, payload: dict) -> str:
    """Atomically write `payload` to `path` (a file, or a directory that gets `ckpt.pt`)."""
    if not path.endswith(".pt"):
        path = os.path.join(path, CKPT_NAME)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def resolve(path: str) -> str:
    """A checkpoint file from a file or a run/checkpoint directory."""
    if os.path.isdir(path):
        for cand in (os.path.join(path, CKPT_NAME), os.path.join(path, "latest", CKPT_NAME)):
            if os.path.isfile(cand):
                return cand
        raise CheckpointError(f"no {CKPT_NAME} in {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    path = resolve(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbage files
        msg = f"corrupt or unreadable checkpoint {path}: {type(e).__name__}"
        raise CheckpointError(msg) from None
    needed = ("model", "optimizer", "step", "args", "rng", "data_step")
    if not isinstance(payload, dict) or any(k not in payload for k in needed):
        raise CheckpointError(f"{path} is not a train checkpoint (missing keys)")
    return payload
