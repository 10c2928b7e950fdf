"""Token data (embedded stdlib corpus, prepared dataset folders, nanoGPT-style .bin memmaps, raw
text) and the seed's sampler.

Sampling follows the seed code (epfml/schedules-and-scaling, `src/data/utils.py`): the token stream
is cut into non-overlapping chunks of `sequence_length + 1` tokens starting at a random per-epoch
offset, the chunks are permuted with a generator seeded by `seed + epoch`, and batch i of rank r is
made of the chunks at positions `(world_size * i + r) * batch_size …`. Everything is a function of
(seed, step), so a resumed run sees exactly the batches a straight run would.

A prepared folder (written by `train prepare`) holds `train.bin`, `val.bin` and `meta.json`
({"vocab_size", "dtype", "tokenizer", ...}); vocab and dtype come from meta.json, so opening a
dataset costs no pass over its tokens.
"""

from __future__ import annotations

import os
import stat
import sysconfig
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from core import UserError, read_json
from core.files import read_bytes
from core.owner import safe_name

if TYPE_CHECKING:
    import torch

_SKIP_DIRS = ("site-packages", "test", "tests", "__pycache__", "idlelib")
EMBEDDED_MAX_BYTES = 8 * 1024 * 1024  # caps load time (< 1 s) while giving ~8M tokens
VAL_FRACTION = 0.05
META_NAME = "meta.json"
TOKEN_DTYPES = ("uint16", "uint32")
PREPARE_HINT = "make one with `train prepare FILES --out DIR`"


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
        raise UserError(f"no .py files found under the stdlib directory {root}")
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)


def padded_vocab(n: int) -> int:
    """`n` rounded up to a multiple of 64 (GPT-2's 50257 -> 50304, as in the seed code)."""
    return 64 * ((int(n) + 63) // 64)


def _meta_path(path: str) -> str:
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, META_NAME)


def data_meta(path: str | None) -> dict | None:
    """meta.json of a prepared folder (or of the folder holding a .bin file); None if there is none.

    Raises UserError when meta.json exists but is unreadable or lacks a valid vocab_size / dtype.
    """
    if path is None or not (os.path.isdir(path) or path.endswith(".bin")):
        return None
    mp = _meta_path(path)
    if not os.path.lexists(mp):
        return None
    try:
        meta = read_json(mp, nofollow=True, what="meta.json")
    except UserError as e:
        why = str(e) if str(e).startswith(("cannot read", "refusing")) else f"cannot read {e}"
        raise UserError(f"{why}; {PREPARE_HINT}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{mp} is not a JSON object; {PREPARE_HINT}")
    vocab, dtype = meta.get("vocab_size"), meta.get("dtype")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab <= 0:
        raise UserError(f"{mp}: vocab_size must be a positive integer, got {vocab!r}")
    if dtype not in TOKEN_DTYPES:
        raise UserError(f"{mp}: dtype must be one of {', '.join(TOKEN_DTYPES)}, got {dtype!r}")
    if vocab > np.iinfo(dtype).max + 1:
        raise UserError(f"{mp}: vocab_size {vocab} does not fit dtype {dtype}")
    tok = meta.get("tokenizer")
    if tok is not None and not isinstance(tok, dict):
        raise UserError(f"{mp}: tokenizer must be an object, got {tok!r}")
    if isinstance(tok, dict) and tok.get("kind") == "hf":  # its file lives in the dataset folder
        safe_name(tok.get("file"), f"{mp}: tokenizer file")
    return meta


def check_token_ids(tokens: np.ndarray, vocab: int, path: str) -> None:
    """UserError when a token id is >= `vocab` (it would index past the embedding mid-run).

    One pass over the tokens in chunks, once when the data opens."""
    chunk = 1 << 24
    for i in range(0, len(tokens), chunk):
        top = int(np.max(tokens[i : i + chunk]))
        if top >= vocab:
            raise UserError(
                f"{path} holds token id {top}, but its meta.json vocab_size is {vocab}: the data "
                "and its meta.json do not belong together; prepare it again"
            )


def _memmap(path: str, dtype: str) -> np.ndarray:
    """Token memmap of a .bin file; UserError naming the path when it is missing or malformed."""
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path}")
    try:
        size = os.path.getsize(path)
        if size == 0 or size % np.dtype(dtype).itemsize:
            raise UserError(f"{path}: size {size} is not a whole number of {dtype} tokens")
        return np.memmap(path, dtype=dtype, mode="r")
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror or e}") from None


def _read_bytes(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise UserError(f"data file not found: {path}")
    return np.frombuffer(read_bytes(path), dtype=np.uint8)  # regular files only (no FIFO)


def _split(tokens: np.ndarray, val_fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    n_val = int(len(tokens) * val_fraction)
    if len(tokens) - n_val < 2 or n_val < 2:
        raise UserError(f"{what} has only {len(tokens)} tokens, too few to split")
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def _prepared(path: str, uint32: bool, val_fraction: float):
    """(train, val, vocab) of a prepared folder or a .bin file (with its folder's meta.json)."""
    meta = data_meta(path)
    if os.path.isdir(path):
        if meta is None:
            raise UserError(f"{path} is a folder without {META_NAME}; {PREPARE_HINT}")
        train_path = os.path.join(path, "train.bin")
    else:
        train_path = path
    dtype = meta["dtype"] if meta else ("uint32" if uint32 else "uint16")
    train = _memmap(train_path, dtype)
    if meta is not None:
        check_token_ids(train, meta["vocab_size"], train_path)
        vocab = padded_vocab(meta["vocab_size"])
    else:
        # No meta.json: one pass over the file (nanoGPT GPT-2 data gives 50257 -> padded 50304).
        vocab = padded_vocab(int(train.max()) + 1)
    folder = os.path.dirname(os.path.abspath(train_path))
    val_path = os.path.join(folder, "val.bin")
    # A separate validation file beside train.bin (the prepared layout, and nanoGPT's) wins over
    # holding out the tail of the training stream.
    if os.path.basename(train_path) == "train.bin" and os.path.isfile(val_path):
        val = _memmap(val_path, dtype)
        if meta is not None:
            check_token_ids(val, meta["vocab_size"], val_path)
        if len(train) < 2 or len(val) < 2:
            raise UserError(f"{folder}: train.bin or val.bin has fewer than 2 tokens")
        return train, val, vocab
    return (*_split(train, val_fraction, train_path), vocab)


def check_data_path(path: str, flag: str = "--data") -> None:
    """Open `path` as `get_data` would (regular files only, meta.json, sizes, token ids) and
    raise the one UserError it would: a sweep checks its data once, before any worker starts."""
    target = os.path.join(path, "train.bin") if os.path.isdir(path) else path
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the check
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(0, "not a regular file")
            os.read(fd, 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise UserError(f"{flag} {target}: cannot read it ({e.strerror or e})") from None
    get_data(path)


def get_data(
    path: str | None = None, *, uint32: bool = False, val_fraction: float = VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray, int]:
    """(train_tokens, val_tokens, vocab_size).

    path None: embedded corpus (vocab 256). A prepared folder (`train prepare`): train.bin and
    val.bin with vocab and dtype from meta.json. `*.bin`: token memmap (uint16, or uint32), with
    vocab and dtype from a meta.json beside it when present, else vocab = max+1 (one pass over the
    file); a `val.bin` beside a `train.bin` is the validation split. Anything else: byte-level text
    (vocab 256). Without a validation file the last `val_fraction` of the stream is held out.
    The vocab is rounded up to a multiple of 64.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val fraction must be in (0, 1), got {val_fraction}")
    if path is None:
        return (*_split(embedded_corpus(), val_fraction, "the embedded corpus"), 256)
    if os.path.isdir(path) or path.endswith(".bin"):
        return _prepared(path, uint32, val_fraction)
    return (*_split(_read_bytes(path), val_fraction, path), 256)


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
        split: str = "train",
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
            hint = " or a larger --val-fraction in `train prepare`" if split == "val" else ""
            raise UserError(
                f"the {split} split has {len(tokens)} tokens: {max(0, self.n_chunks)} sequences "
                f"of {sequence_length}, fewer than one global batch ({self.per_step}); use more "
                f"text{hint}, a smaller --batch-size or a shorter --sequence-length"
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
        import torch  # here, so that checking data (bench sweep's parent) needs no torch

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
