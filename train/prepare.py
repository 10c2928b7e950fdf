"""`train prepare FILES --out DIR`: text / JSONL / Parquet files -> DIR/train.bin + val.bin +
meta.json, the token files `train --data DIR` reads.

Documents are tokenized in input order (a text file is one document; a JSONL line or a Parquet row
is one), each followed by the tokenizer's end-of-text token when it has one, as nanoGPT's
`data/openwebtext/prepare.py` does. The last `--val-fraction` of the token stream is val.bin.
Tokens are uint16 when the vocabulary has fewer than 65536 entries, else uint32. Tokenizing runs in
`--workers` processes; results are written in order, so the output does not depend on the count.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import itertools
import json
import math
import os
import shutil
import signal
import stat
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from core import ArgParser, UserError, atomic_write, owner, run_cli
from core.files import decode_json, read_bytes, refuse_symlinks
from train.tokenizer import Codec, load_codec, parse_spec, pick_eot

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
BATCH_CHARS = 1 << 20  # text per task sent to a worker
PIECE_CHARS = 2048  # text files are encoded in pieces of about this many characters
BATCH_DOCS = 4096
FORMAT_VERSION = 1
MAX_WORKERS = 256  # tokenizer processes: more only starts processes that wait for input
# train.data.META_NAME; not imported from there because the spawned workers import this module and
# train.data imports torch (seconds per worker).
META_NAME = "meta.json"

# (text, ends_document, input bytes consumed): the unit that flows from the readers to the workers.
Piece = tuple[str, bool, int]


def build_parser() -> ArgParser:
    p = ArgParser(
        prog="train prepare",
        description="Tokenize text / JSONL / Parquet files into train.bin + val.bin + meta.json "
        "for `train --data DIR`.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE",
        help="input files (.jsonl/.json: one JSON object a line; .parquet; anything else: "
        "text, one document a file; .gz allowed for text and JSONL) or folders of them",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--tokenizer",
        default="bytes",
        metavar="NAME",
        help="bytes, a tiktoken encoding (gpt2, cl100k_base; needs tiktoken and its cached "
        "files), or a Hugging Face tokenizer.json (or a folder holding one)",
    )
    p.add_argument(
        "--text-field",
        default="text",
        metavar="NAME",
        help="JSONL key / Parquet column holding the text",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        metavar="F",
        help="fraction of the tokens (the tail) written to val.bin; 0 = no val.bin",
    )
    p.add_argument(
        "--eot",
        default="auto",
        metavar="TOKEN",
        help="token appended after each document: auto (the tokenizer's end-of-text, if any), "
        "none, or a special token's spelling",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, min(8, os.cpu_count() or 1)),
        metavar="N",
        help="tokenizer processes",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    return p


# ----------------------------------------------------------------------------- readers


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files in the order given; a folder contributes its known-format files, sorted."""
    known = TEXT_SUFFIXES + JSONL_SUFFIXES + (".parquet",)
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [
                    os.path.join(dirpath, f)
                    for f in filenames
                    if not f.startswith(".")
                    and f.removesuffix(".gz").endswith(known)
                    and os.path.isfile(os.path.join(dirpath, f))  # no FIFO, socket or device
                ]
            if not found:
                raise UserError(f"no .txt/.jsonl/.parquet files in {item}")
            files += sorted(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise UserError(f"input not found: {item}")
    return files


def _open_binary(path: str):
    """`path` opened for reading: regular files only (a FIFO swapped in would block forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(0, "not a regular file")
    os.set_blocking(fd, True)
    fh = os.fdopen(fd, "rb")
    return gzip.open(fh, "rb") if path.endswith(".gz") else fh


def _text_pieces(path: str) -> Iterator[Piece]:
    """A text file as one document, cut into pieces of about PIECE_CHARS (tokenizers encode many
    short strings much faster than one long one, and in parallel). A cut goes only before a line
    that starts with a non-space character, where GPT-2-style pre-tokenizers split anyway, so the
    tokens are those of the whole file."""
    buf: list[str] = []
    size = used = 0
    with _open_binary(path) as fh:
        for raw in fh:
            line = raw.decode("utf-8", errors="replace")
            if size >= PIECE_CHARS and line[:1].strip():
                yield "".join(buf), False, used
                buf, size, used = [], 0, 0
            buf.append(line)
            size += len(line)
            used += len(raw)
    yield "".join(buf), True, used


def _jsonl_pieces(path: str, field: str) -> Iterator[Piece]:
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = decode_json(raw)
            except ValueError:
                raise UserError(f"{path}:{lineno}: not a JSON object") from None
            text = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                msg = f"{path}:{lineno}: no text field {field!r}; choose one with --text-field"
                raise UserError(msg)
            yield text, True, len(raw)


def _parquet_pieces(path: str, field: str) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs the pyarrow package: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001  (pyarrow raises ArrowInvalid etc. for a bad file)
        raise UserError(f"cannot read Parquet file {path}: {str(e).splitlines()[0]}") from None
    names = pf.schema_arrow.names
    if field not in names:
        cols = ", ".join(names[:10])
        raise UserError(f"{path} has no column {field!r} (columns: {cols}); use --text-field")
    per_row = os.path.getsize(path) / max(1, pf.metadata.num_rows)
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is None:
                continue
            if not isinstance(text, str):
                raise UserError(f"{path}: column {field!r} holds {type(text).__name__}, not text")
            yield text, True, int(per_row)


def read_pieces(files: Sequence[str], field: str) -> Iterator[Piece]:
    for path in files:
        stem = path.removesuffix(".gz")
        try:
            if stem.endswith(".parquet"):
                yield from _parquet_pieces(path, field)
            elif stem.endswith(JSONL_SUFFIXES):
                yield from _jsonl_pieces(path, field)
            else:
                yield from _text_pieces(path)
        except (OSError, EOFError) as e:  # unreadable file, truncated .gz
            why = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise UserError(f"cannot read {path}: {why}") from None


def batches(pieces: Iterator[Piece]) -> Iterator[list[Piece]]:
    out: list[Piece] = []
    chars = 0
    for piece in pieces:
        out.append(piece)
        chars += len(piece[0])
        if chars >= BATCH_CHARS or len(out) >= BATCH_DOCS:
            yield out
            out, chars = [], 0
    if out:
        yield out


# ----------------------------------------------------------------------------- workers

_CODEC: Codec | None = None
_EOT: int | None = None


def _init_worker(spec: dict, eot: int | None, parallel: bool) -> None:
    global _CODEC, _EOT
    if not parallel:  # a pool worker: Ctrl-C is the parent's to handle (one line, no tracebacks)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _CODEC = load_codec(spec, parallel=parallel)
    _EOT = eot


def _encode(batch: list[Piece]) -> tuple[np.ndarray, int, int]:
    """(token ids as int64, documents ended, input bytes consumed) of one batch."""
    ids = _CODEC.encode_batch([text for text, _, _ in batch])
    parts: list[np.ndarray] = []
    for arr, (_, ends, _) in zip(ids, batch):
        parts.append(arr.astype(np.int64, copy=False))
        if ends and _EOT is not None:
            parts.append(np.array([_EOT], dtype=np.int64))
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return tokens, sum(ends for _, ends, _ in batch), sum(n for _, _, n in batch)


def _results(work: Iterator[list[Piece]], init_args: tuple, workers: int):
    """Encoded batches in input order; at most 2 tasks per worker in flight (bounded memory)."""
    work = iter(work)
    head = [b for b in (next(work, None), next(work, None)) if b is not None]
    if workers <= 1 or len(head) < 2:  # one batch in all: starting processes would cost more
        _init_worker(*init_args, True)
        yield from map(_encode, itertools.chain(head, work))
        return
    work = itertools.chain(head, work)
    import multiprocessing as mp

    # spawn: no forked copies of the tokenizers thread pool (or of torch) in the workers.
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(*init_args, False))
    try:
        pending: collections.deque = collections.deque()
        for batch in work:
            pending.append(pool.apply_async(_encode, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _progress_bar(total: int, disabled: bool):
    if disabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr)


# ----------------------------------------------------------------------------- output


DATASET_FILES = (META_NAME, "train.bin", "val.bin", "tokenizer.json")
BUILD_PREFIX = ".prepare.tmp."  # OUT/.prepare.tmp.<pid>/: the dataset being built


def _check_out(out: str, overwrite: bool) -> None:
    """Refuse an --out that is a file, lies inside another steptime folder, is a train run or a
    sweep, or holds a dataset (without --overwrite); then own it (one writer) and remove the
    build folders of killed runs."""
    if not out:
        raise UserError("--out must name a folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder")
    kind = owner.kind_of(out)
    if kind in ("train run", "sweep"):
        raise UserError(f"--out {out} holds a {kind}: a dataset there would mix into it")
    if kind is None:
        owner.check_not_nested(out, "--out")
    if os.path.isdir(out):
        refuse_symlinks(out, DATASET_FILES)
    taken = [n for n in DATASET_FILES[:3] if os.path.lexists(os.path.join(out, n))]
    if taken and not overwrite:
        msg = f"{out} already holds a dataset ({', '.join(taken)}); pass --overwrite to replace it"
        raise UserError(msg)
    owner.own(out, "train prepare")
    for name in os.listdir(out):  # we own OUT: every build folder left is a killed run's
        if name.startswith(BUILD_PREFIX) or name.startswith(".tokens.tmp."):
            path = os.path.join(out, name)
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)


def _swap_in(build: str, out: str) -> None:
    """Move the finished dataset from `build` into OUT: meta.json goes first (OUT is no dataset
    while files are swapped) and comes back last, so a kill midway never leaves a mix that reads
    as a dataset. Renames within one filesystem need no space."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, META_NAME))
        for name in DATASET_FILES[1:] + (META_NAME,):
            src, dst = os.path.join(build, name), os.path.join(out, name)
            if os.path.exists(src):
                os.replace(src, dst)
            elif name != META_NAME:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(dst)  # an older dataset's val.bin must not pass for this one's
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None


def _write_splits(out: str, scratch: str, n: int, dtype: str, val_fraction: float) -> int:
    """train.bin (the head of the scratch stream) and val.bin (its tail); returns val tokens."""
    n_val = max(2, math.ceil(n * val_fraction)) if val_fraction > 0 else 0
    if n - n_val < 2:
        raise UserError(f"only {n} tokens in the input: too few for train and validation splits")
    item = np.dtype(dtype).itemsize
    val_path = os.path.join(out, "val.bin")
    if n_val:
        tail = np.fromfile(scratch, dtype=dtype, offset=(n - n_val) * item)
        atomic_write(val_path, tail.tobytes())

    def head(dst) -> None:
        with open(scratch, "rb") as src:
            left = (n - n_val) * item
            while left:
                chunk = src.read(min(left, 1 << 24))
                dst.write(chunk)
                left -= len(chunk)

    atomic_write(os.path.join(out, "train.bin"), head)
    return n_val


def prepare(args) -> dict:
    """Tokenize `args.inputs` into `args.out`; returns the meta.json written."""
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UserError(f"--workers must be in 1..{MAX_WORKERS}, got {args.workers}")
    files = expand_inputs(args.inputs)
    codec = load_codec(parse_spec(args.tokenizer))
    eot = pick_eot(codec, args.eot)
    dtype = "uint16" if codec.vocab_size < 65536 else "uint32"
    created = not os.path.exists(args.out)
    _check_out(args.out, args.overwrite)
    build = os.path.join(args.out, f"{BUILD_PREFIX}{os.getpid()}")
    bar = None
    old_term = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C
    try:
        os.mkdir(build)  # fresh and ours: nothing in it can be a planted link
        scratch = os.path.join(build, "tokens")
        bar = _progress_bar(sum(os.path.getsize(f) for f in files), args.no_progress)
        n = docs = 0
        with open(scratch, "wb") as fh:
            init = (codec.spec, eot)
            work = batches(read_pieces(files, args.text_field))
            for tokens, n_docs, used in _results(work, init, args.workers):
                fh.write(tokens.astype(dtype).tobytes())
                n, docs = n + len(tokens), docs + n_docs
                if bar is not None:
                    bar.update(used)
        n_val = _write_splits(build, scratch, n, dtype, args.val_fraction)
        os.remove(scratch)
        meta = _meta(args, build, codec, eot, dtype, files, n, n_val, docs)
        atomic_write(os.path.join(build, META_NAME), json.dumps(meta, indent=1) + "\n")
        _swap_in(build, args.out)
    except OSError as e:
        raise UserError(f"cannot write {args.out}: {e.strerror or e}") from None
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if bar is not None:
            bar.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(build)
        owner.release(args.out)
        if (
            created
            and os.path.isdir(args.out)
            and not os.path.exists(os.path.join(args.out, META_NAME))
        ):
            with contextlib.suppress(OSError):  # a failed first build leaves no folder behind
                os.remove(os.path.join(args.out, owner.LOCK_NAME))
                os.rmdir(args.out)
    return meta


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _meta(args, build: str, codec: Codec, eot, dtype, files, n, n_val, docs) -> dict:
    spec = dict(codec.spec)
    if spec["kind"] == "hf":  # the dataset folder carries its tokenizer: it stays usable if moved
        atomic_write(os.path.join(build, "tokenizer.json"), read_bytes(spec["file"]))
        spec = {"kind": "hf", "file": "tokenizer.json", "source": spec["file"]}
    return {
        "format_version": FORMAT_VERSION,
        "vocab_size": codec.vocab_size,
        "dtype": dtype,
        "tokenizer": spec,
        "eot_token": eot,
        "train_tokens": n - n_val,
        "val_tokens": n_val,
        "documents": docs,
        "val_fraction": args.val_fraction,
        "text_field": args.text_field,
        "sources": [os.path.abspath(f) for f in files],
    }


def _body(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    meta = prepare(args)
    tok = meta["tokenizer"].get("name") or meta["tokenizer"].get("source") or "bytes"
    print(
        f"wrote {args.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"from {meta['documents']:,} documents ({meta['dtype']}, vocab {meta['vocab_size']}, "
        f"tokenizer {tok})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_body, argv, interrupted="nothing was kept; run the same command again")


if __name__ == "__main__":
    raise SystemExit(main())
