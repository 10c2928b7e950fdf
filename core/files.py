"""Files steptime reads and writes: all-or-nothing writes, appends and reads that never follow a
symlink planted in a managed folder, and one JSON reader that turns any bad input into UserError.

Writes: `atomic_write` (temp file created with O_EXCL|O_NOFOLLOW beside the target, fsync, rename;
a rename replaces a symlink rather than following it) and `open_append` (O_NOFOLLOW). Reads:
`read_bytes` opens regular files only (a FIFO would block forever) and, with `nofollow`, refuses a
symlink; `read_json` and `read_jsonl` decode with any failure (syntax, encoding, nesting deep
enough to exhaust the recursion limit) as one UserError, or, per JSONL record, one warning line.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable
from typing import Any

from core.errors import UserError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0] or type(e).__name__


class _Recording:
    """A binary file that remembers the first exception its writes raised.

    torch.save's C++ writer turns any exception of the Python file it writes into a RuntimeError
    ("enforce fail at inline_container.cc"): Ctrl-C and a full disk lose their identity. The
    recorded exception gives it back.
    """

    def __init__(self, fh) -> None:
        self.fh, self.error = fh, None

    def write(self, b) -> int:
        try:
            return self.fh.write(b)
        except BaseException as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str):
        return getattr(self.fh, name)


def check_inside(path: str, root: str) -> None:
    """Refuse `path` unless it lies under `root` with no symlink on the way (UserError)."""
    root_abs = os.path.abspath(root)
    rel = os.path.relpath(os.path.abspath(path), root_abs)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise UserError(f"refusing {path}: it is outside {root}")
    cur = root_abs
    for part in rel.split(os.sep)[:-1] if rel != "." else []:
        cur = os.path.join(cur, part)
        if os.path.islink(cur):
            raise UserError(f"refusing to use {cur}: it is a symlink (steptime never follows one)")


def refuse_symlinks(folder: str, names: Iterable[str]) -> None:
    """UserError when an entry of `folder` that steptime manages is a symlink."""
    for name in names:
        p = os.path.join(folder, name)
        if os.path.islink(p):
            raise UserError(
                f"{p} is a symlink: steptime never writes through one; remove it or use another "
                "folder"
            )


def atomic_write(
    path: str, data: str | bytes | Callable[[Any], None], *, inside: str | None = None
) -> None:
    """Write `path` all-or-nothing: a temp file beside it, fsync, then `os.replace`.

    `data` is text, bytes, or a callable that writes into the open binary file (e.g. torch.save).
    On any failure the temp file is removed and the old `path` is left untouched; an OSError becomes
    a one-line UserError naming the path (a full disk, a read-only folder, a file where a folder
    should be). The temp file is created exclusively and never through a symlink; `inside`: a
    folder `path` must lie under without a symlink on the way. Ctrl-C stays KeyboardInterrupt.
    """
    if inside is not None:
        check_inside(path, inside)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    rec = None
    try:
        os.makedirs(folder, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a stale temp of a killed writer with our pid (or a planted link)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                rec = _Recording(fh)
                data(rec)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        cause = rec.error if rec is not None and rec.error is not None else e
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if isinstance(cause, OSError):
            raise UserError(f"cannot write {path}: {_why(cause)}") from None
        if isinstance(e, RuntimeError) and "inline_container" in str(e):  # torch.save's own error
            raise UserError(f"cannot write {path}: {str(e).splitlines()[0]}") from None
        raise


def open_append(path: str) -> int:
    """A file descriptor appending to `path` (created if missing), never through a symlink;
    readable too (pread), so a writer can look at the file's last byte."""
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise UserError(f"refusing to write {path}: it is a symlink") from None
        raise UserError(f"cannot write {path}: {_why(e)}") from None


def read_bytes(path: str, *, nofollow: bool = False, limit: int | None = None) -> bytes:
    """The content of regular file `path` (UserError otherwise: missing, a FIFO or device, a
    symlink with `nofollow`, larger than `limit` bytes)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC | (_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if nofollow and os.path.islink(path):
            raise UserError(f"refusing to read {path}: it is a symlink") from None
        raise UserError(f"cannot read {path}: {_why(e)}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"cannot read {path}: not a regular file")
        if limit is not None and st.st_size > limit:
            raise UserError(f"{path} is {st.st_size} bytes, more than {limit}: not our file")
        try:
            return fh.read()
        except OSError as e:
            raise UserError(f"cannot read {path}: {_why(e)}") from None


def decode_json(raw: str | bytes) -> Any:
    """json.loads where every failure is a json.JSONDecodeError (a ValueError): a nesting bomb's
    RecursionError and bytes that are no UTF-8 too, so existing `except JSONDecodeError` holds."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except UnicodeDecodeError:
        raise json.JSONDecodeError("not UTF-8 text", "", 0) from None


def read_json(path: str, *, nofollow: bool = False, what: str = "JSON") -> Any:
    """The JSON value in `path`; any failure (missing, unreadable, not JSON, a nesting bomb) is one
    UserError naming the file."""
    raw = read_bytes(path, nofollow=nofollow)
    try:
        return decode_json(raw)
    except ValueError as e:
        why = str(e).splitlines()[0] if str(e) else "not JSON"
        raise UserError(f"{path}: not valid {what} ({why})") from None


def jsonl_records(
    path: str, *, nofollow: bool = False, check: Callable[[Any], str | None] | None = None
) -> tuple[list, int, str]:
    """(records, lines skipped, why the first was) of JSON-lines file `path`: a line that does
    not parse, or for which `check` returns a reason, is skipped."""
    raw = read_bytes(path, nofollow=nofollow)
    out, skipped, first = [], 0, ""
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rec = decode_json(line)
            reason = check(rec) if check is not None else None
        except ValueError as e:
            reason = f"is not JSON ({str(e).split(': line ')[0] or 'unreadable'})"
        if reason:
            skipped += 1
            first = first or f"line {n}: {reason}"
            continue
        out.append(rec)
    return out, skipped, first


def read_jsonl(
    path: str, *, nofollow: bool = False, check: Callable[[Any], str | None] | None = None
) -> list:
    """The records of JSON-lines file `path` (see `jsonl_records`); one warning line on stderr
    counts the lines skipped."""
    out, skipped, first = jsonl_records(path, nofollow=nofollow, check=check)
    if skipped:
        warn_line(f"{path}: skipped {skipped} unreadable record(s) (first: {first})")
    return out


_WARNED: set[str] = set()


def warn_line(msg: str) -> None:
    """One `warning: ...` line on stderr; the same warning again in this process is not repeated
    (a sweep rereads its rows after every config)."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)
