"""Token data (embedded stdlib corpus, nanoGPT-style .bin memmaps, raw text) and the seed's sampler.

Sampling follows spec/seeds.md §1.8: the token stream is cut into non-overlapping chunks of
`sequence_length + 1` tokens starting at a random per-epoch offset, the chunks are permuted with a
generator seeded by `seed + epoch`, and batch i of rank r is made of the chunks at positions
`(world_size * i + r) * batch_size …`. Everything is a function of (seed, step), so a resumed run
sees exactly the batches a straight run would.
"""

from __future__ import annotations

import os
import sysconfig
from functools import lru_cache

import numpy as np
import torch

_SKIP_DIRS = ("site-packages", "test", "tests", "__pycache__", "idlelib")
EMBEDDED_MAX_BYTES = 8 * 1024 * 1024  # caps load time (< 1 s) while giving ~8M tokens
VAL_FRACTION = 0.05


class DataError(ValueError):
    """A data source that cannot be read; one line for the user."""


@lru_cache(maxsize=2)
def embedded_corpus(max_bytes: int = EMBEDDED_MAX_BYTES) -> np.ndarray:
    """Bytes of the Python stdlib's .py files (sorted relative paths, tests excluded), as uint8.

    Every Python install carries these files, so the demo needs no download. Sorting the relative
    paths makes the corpus identical across machines with the same Python version.
    """
    root = sysconfig.get_paths()["stdlib"]
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        # site-packages differs per venv; the test suites are huge and repetitive: leave them out.
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for f in filenames:
            if f.endswith(".py"):
                paths.append(os.path.normpath(os.path.join(rel, f)))
    paths.sort()
    chunks: list[bytes] = []
    total = 0
    for rel in paths:
        try:
            with open(os.path.join(root, rel), "rb") as fh:
                b = fh.read()
        except OSError:
            continue
        chunks.append(b)
        total += len(b)
        if total >= max_bytes:
            break
    if not chunks:
        raise DataError(f"no .py files found under the stdlib directory {root}")
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)


def get_data(
    path: str | None = None, *, uint32: bool = False, val_fraction: float = VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray, int]:
    """(train_tokens, val_tokens, vocab_size).

    path None: embedded corpus (vocab 256). `*.bin`: uint16 (or uint32) token memmap, vocab = max+1
    rounded up to a multiple of 64. Anything else: byte-level text (vocab 256). The last
    `val_fraction` of the stream is the held-out validation split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val fraction must be in (0, 1), got {val_fraction}")
    if path is None:
        tokens = embedded_corpus()
        vocab = 256
    else:
        if not os.path.isfile(path):
            raise DataError(f"data file not found: {path}")
        if path.endswith(".bin"):
            dtype = np.uint32 if uint32 else np.uint16
            size = os.path.getsize(path)
            if size == 0 or size % np.dtype(dtype).itemsize:
                name = np.dtype(dtype).name
                raise DataError(f"{path}: size {size} is not a whole number of {name} tokens")
            tokens = np.memmap(path, dtype=dtype, mode="r")
            # One pass over the file; for nanoGPT GPT-2 data this gives 50257 -> padded 50304.
            top = int(tokens.max()) + 1
            vocab = 64 * ((top + 63) // 64)
        else:
            with open(path, "rb") as fh:
                tokens = np.frombuffer(fh.read(), dtype=np.uint8)
            vocab = 256
    n_val = int(len(tokens) * val_fraction)
    if len(tokens) - n_val < 2 or n_val < 2:
        raise DataError(f"data has only {len(tokens)} tokens, too few to split")
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :], vocab


class Sampler:
    """Deterministic, resumable batches of (x, y) without replacement within an epoch."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        sequence_length: int,
        seed: int = 1337,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tokens = tokens
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.chunk = sequence_length + 1
        # Leave room for a random offset < chunk so every epoch has the same chunk count.
        self.n_chunks = (len(tokens) - self.chunk) // self.chunk
        self.per_step = batch_size * world_size
        if self.n_chunks < self.per_step:
            raise DataError(
                f"{len(tokens)} tokens give {self.n_chunks} sequences of {sequence_length}, "
                f"fewer than one global batch ({self.per_step})"
            )
        self.steps_per_epoch = self.n_chunks // self.per_step
        self.step = 0
        self._epoch = -1
        self._perm: np.ndarray | None = None
        self._offset = 0

    def set_step(self, step: int) -> None:
        """Position the sampler so the next batch is global batch number `step`."""
        self.step = int(step)

    def _epoch_plan(self, epoch: int) -> None:
        if epoch != self._epoch:
            rng = np.random.default_rng(self.seed + epoch)
            self._offset = int(rng.integers(0, self.chunk))
            self._perm = rng.permutation(self.n_chunks)
            self._epoch = epoch

    def batch_indices(self, step: int) -> np.ndarray:
        """Start offsets (into `tokens`) of this rank's sequences for global batch `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        self._epoch_plan(epoch)
        first = (within * self.world_size + self.rank) * self.batch_size
        chunks = self._perm[first : first + self.batch_size]
        return self._offset + chunks * self.chunk

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.batch_indices(self.step)
        self.step += 1
        # One vectorised gather instead of a Python loop per sequence.
        idx = starts[:, None] + np.arange(self.chunk)[None, :]
        buf = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        x, y = buf[:, :-1], buf[:, 1:]
        if torch.device(device).type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
            return x, y.pin_memory().to(device, non_blocking=True)
        return x.contiguous(), y.contiguous()
