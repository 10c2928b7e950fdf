"""Checkpoints: model, optimizer (with its averages), averaging windows, RNG states, data position
and the run's TrainConfig.

Written with `core.atomic_write` (temporary file, fsync, rename), so a crash mid-write never
leaves a truncated `ckpt.pt` and a failed write leaves no temporary file. RNG states are stored as
plain lists and tensors so that `torch.load(weights_only=True)` reads them: no pickle of arbitrary
objects. Everything read back is validated, so a crafted or damaged file is one clean error.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from typing import Any

import numpy as np
import torch

from core import UserError, atomic_write
from core.files import check_inside
from train.config import TrainConfig

CKPT_NAME = "ckpt.pt"
REQUIRED = ("model", "optimizer", "step", "rng", "data_step")
# Settings a checkpoint must name explicitly: defaults filled in here would change the run silently.
REQUIRED_SETTINGS = ("scheduler", "iterations", "warmup_steps", "lr")


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
    atomic_write(path, lambda fh: torch.save(payload, fh))
    return path


def save_copy(src_file: str, path: str) -> str:
    """`path` (a file, or a directory that gets `ckpt.pt`) holding checkpoint `src_file`: a hard
    link where the filesystem allows (no second write of a model-sized file), else a copy;
    atomic either way (a later atomic rewrite of one name leaves the other intact)."""
    if not path.endswith(".pt"):
        path = os.path.join(path, CKPT_NAME)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.link(src_file, tmp)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)

        def copy(fh) -> None:
            with open(src_file, "rb") as src:
                shutil.copyfileobj(src, fh)

        atomic_write(path, copy)
    return path


def resolve(path: str) -> str:
    """A checkpoint file from a file or a run/checkpoint directory."""
    if os.path.isdir(path):
        for cand in (os.path.join(path, CKPT_NAME), os.path.join(path, "latest", CKPT_NAME)):
            if os.path.isfile(cand):
                return cand
        raise UserError(f"no {CKPT_NAME} in {path} (nor in {os.path.join(path, 'latest')})")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    return path


def step_of(path: str) -> int:
    """The step of checkpoint file `path` (-1 if it cannot be read), without reading the tensors
    into memory (mmap)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step = payload.get("step") if isinstance(payload, dict) else None
    except Exception:  # noqa: BLE001  (garbage: not a checkpoint to resume from)
        return -1
    return step if type(step) is int and step >= 0 else -1


_MISFIT = "checkpoint does not fit this run: "


def check_optimizer_fits(osd: dict, params_by_group: list[list[torch.Tensor]]) -> None:
    """UserError unless every saved optimizer tensor has its parameter's shape and every
    parameter with state has the same moments: torch would broadcast a wrong-shaped moment, or
    FusedAdamW zero a missing one, and train on silently."""
    groups = osd.get("param_groups", [])
    state = osd.get("state", {})
    if not isinstance(state, dict) or len(groups) != len(params_by_group):
        n = len(groups) if isinstance(groups, list) else "?"
        raise UserError(
            f"{_MISFIT}its optimizer has {n} parameter groups, this run {len(params_by_group)}"
        )
    keys = None
    for g, (saved, params) in enumerate(zip(groups, params_by_group)):
        ids = saved.get("params") if isinstance(saved, dict) else None
        if not isinstance(ids, list) or len(ids) != len(params):
            raise UserError(
                f"{_MISFIT}its optimizer group {g} does not match this model's parameters"
            )
        for pid, p in zip(ids, params):
            st = state.get(pid)
            if st is None:
                continue
            if not isinstance(st, dict):
                raise UserError(f"{_MISFIT}its optimizer state of parameter {pid} is malformed")
            tensors = {k: v for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0}
            for k, v in tensors.items():
                if tuple(v.shape) != tuple(p.shape):
                    raise UserError(
                        f"its optimizer {k} of parameter {pid} has shape {tuple(v.shape)}, the "
                        f"parameter {tuple(p.shape)}"
                    )
            if keys is None:
                keys = set(tensors)
            elif set(tensors) != keys:
                raise UserError(
                    f"{_MISFIT}its optimizer state of parameter {pid} lacks some moments"
                )


def run_dir_of(ckpt_file: str) -> str:
    """The run folder a checkpoint file belongs to, from its path alone.

    RUN/latest/ckpt.pt and RUN/ckpts/STEP/ckpt.pt belong to RUN; any other DIR/ckpt.pt to DIR.
    """
    d = os.path.dirname(os.path.abspath(ckpt_file))
    if os.path.basename(d) == "latest":
        return os.path.dirname(d)
    parent = os.path.dirname(d)
    if os.path.basename(parent) == "ckpts":
        return os.path.dirname(parent)
    return d


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a train checkpoint; UserError (one line, naming the file) otherwise."""
    given, path = path, resolve(path)
    d = os.path.dirname(os.path.abspath(path))
    managed = os.path.basename(d) == "latest" or os.path.basename(os.path.dirname(d)) == "ckpts"
    if (path != given or managed) and os.path.islink(path):
        raise UserError(f"refusing to read {path}: a run's checkpoint entry is a symlink")
    if managed:  # RUN/latest/ckpt.pt, RUN/ckpts/N/ckpt.pt: no link between RUN and the file
        check_inside(path, run_dir_of(path))
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, AssertionError) as e:
        if "device" in str(e).lower() or "cuda" in str(e).lower():  # map_location, not the file
            why = str(e).strip().splitlines()[0]
            raise UserError(f"cannot load {path} onto {map_location}: {why}") from None
        raise UserError(f"corrupt or unreadable checkpoint {path}: {type(e).__name__}") from None
    except Exception as e:  # torch raises many types for truncated/garbage files
        raise UserError(f"corrupt or unreadable checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED):
        raise UserError(f"{path} is not a train checkpoint (missing keys)")
    try:
        _validate(payload)
        payload["train_config"] = config_of(payload)
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    payload["path"] = path
    return payload


def config_of(payload: dict) -> TrainConfig:
    """The run's TrainConfig, from the checkpoint's `config` (`TrainConfig.to_dict`)."""
    raw = payload.get("config")
    if not isinstance(raw, dict) or not raw:
        raise UserError("it has no training settings (empty or missing 'config')")
    sched = raw.get("schedule") if isinstance(raw.get("schedule"), dict) else {}
    missing = [k for k in REQUIRED_SETTINGS if k not in sched]
    if missing:
        raise UserError(f"its training settings lack {', '.join(missing)}")
    return TrainConfig.from_dict(raw)


def _validate(p: dict) -> None:
    for key in ("step", "data_step"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserError(f"'{key}' must be an integer >= 0, got {v!r}")
    if not isinstance(p["model"], dict) or not all(torch.is_tensor(t) for t in p["model"].values()):
        raise UserError("'model' is not a state dict of tensors")
    opt = p["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict)) or not isinstance(
        opt.get("param_groups"), list
    ):
        raise UserError("'optimizer' is not an optimizer state dict")
    for g in opt["param_groups"]:
        ids = g.get("params") if isinstance(g, dict) else None
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise UserError("its optimizer parameter groups are malformed")
        for key in ("step", "skipped_steps"):  # the counters a resumed run keeps
            v = g.get(key, 0)
            v = v.item() if torch.is_tensor(v) and v.dim() == 0 else v
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 2**53:
                raise UserError(f"its optimizer {key} must be a count >= 0, got {v!r}")
    if not _rng_ok(p["rng"]):
        raise UserError("its 'rng' state is malformed")
    windows = (p.get("averager") or {}).get("windows", [])
    if not isinstance(windows, list) or not all(
        isinstance(w, (list, tuple)) and len(w) == 2 and isinstance(w[1], list) for w in windows
    ):
        raise UserError("its averaging windows are malformed")


def _rng_ok(r: Any) -> bool:
    if not isinstance(r, dict) or not torch.is_tensor(r.get("torch")):
        return False
    n, py = r.get("numpy"), r.get("python")
    if not (isinstance(n, (list, tuple)) and len(n) == 5 and torch.is_tensor(n[1])):
        return False
    if not (isinstance(py, (list, tuple)) and len(py) == 3 and isinstance(py[1], (list, tuple))):
        return False
    kind, keys, pos, has_gauss, cached = n
    numpy_ok = (
        kind == "MT19937"
        and keys.dtype == torch.int64
        and keys.shape == (624,)
        and type(pos) is int
        and 0 <= pos <= 624
        and has_gauss in (0, 1)
        and isinstance(cached, float)
    )
    version, internal, gauss = py
    python_ok = (
        type(version) is int
        and len(internal) == 625
        and all(type(x) is int and 0 <= x < 2**32 for x in internal)
        and (gauss is None or isinstance(gauss, float))
    )
    return numpy_ok and python_ok and r["torch"].dtype == torch.uint8
