"""One owner per folder: an exclusive lock on a file inside it, held while a command writes there.

`own(folder, what)` takes `folder/.steptime.lock` with flock (released by the kernel when the
process dies, so a SIGKILLed run never leaves a stale lock) and writes the holder's pid and host
into it; a second writer gets one UserError line naming them. Ownership is counted per process:
a command that owns a folder can run steps that own it again (a recipe's runs), and the lock goes
when the last `release` comes.

`enclosing_folder(path)` is the folder of steptime's own whose inside `path` lies (a train run, a
sweep, a prepared dataset): a new run or sweep there would be mixed into the other's files.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from core.errors import UserError
from core.files import _CLOEXEC, _NOFOLLOW

LOCK_NAME = ".steptime.lock"
# What marks a folder as one of steptime's, by kind: any one group of names, all present.
KINDS = {
    "train run": (("config.json", "metrics.jsonl"),),
    "sweep": (("sweep.json",), ("results.jsonl",), ("rows", ".work")),
    "dataset": (("meta.json", "train.bin"),),
}
_HELD: dict[str, list] = {}  # realpath -> [fd, count]


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if len(text) >= 2 and text[0].isdigit():
        return f"pid {text[0]} on {text[1]}"
    return "another process"


def own(folder: str, what: str = "steptime") -> None:
    """Make this process the one writer of `folder` (created if missing); UserError if another
    process holds it."""
    import fcntl

    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder}: {e.strerror or e}") from None
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise UserError(f"{path} is a symlink: remove it or use another folder") from None
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        who = _holder(fd)
        os.close(fd)
        raise UserError(
            f"{folder} is in use by {who} (a {what} writing there); wait for it to end or use "
            "another folder"
        ) from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _HELD[key] = [fd, 1]


def release(folder: str) -> None:
    """Undo one `own(folder)` of this process (nothing if it holds none)."""
    key = os.path.realpath(folder)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        with contextlib.suppress(OSError):
            if os.listdir(folder) == [LOCK_NAME]:  # nothing was written: leave no trace
                os.remove(os.path.join(folder, LOCK_NAME))
        with contextlib.suppress(OSError):
            os.close(held[0])  # closing the descriptor releases the flock


@contextlib.contextmanager
def owned(folder: str, what: str = "steptime") -> Iterator[None]:
    own(folder, what)
    try:
        yield
    finally:
        release(folder)


def holds(folder: str) -> bool:
    return os.path.realpath(folder) in _HELD


def kind_of(folder: str) -> str | None:
    """ "train run", "sweep", "dataset" or None: what `folder` holds, by its marker names."""
    if not os.path.isdir(folder):
        return None
    for kind, groups in KINDS.items():
        if any(all(os.path.lexists(os.path.join(folder, n)) for n in g) for g in groups):
            return kind
    return None


def enclosing_folder(path: str, allow: str | None = None) -> tuple[str, str] | None:
    """(folder, kind) of the nearest folder above `path` that is one of steptime's, or None.

    `allow`: a folder that may enclose `path` (a cooldown branch inside its own run)."""
    here = os.path.abspath(path)
    allowed = os.path.realpath(allow) if allow else None
    parent = os.path.dirname(here)
    while parent and parent != here:
        if allowed and os.path.realpath(parent) == allowed:
            return None
        kind = kind_of(parent)
        if kind is not None or os.path.lexists(os.path.join(parent, LOCK_NAME)):
            return parent, kind or "steptime folder"
        here, parent = parent, os.path.dirname(parent)
    return None


def check_not_nested(path: str, flag: str, *, allow: str | None = None) -> None:
    """UserError when `path` lies inside another train run, sweep or dataset folder."""
    found = enclosing_folder(path, allow)
    if found is not None:
        folder, kind = found
        raise UserError(
            f"{flag} {path} lies inside the {kind} {folder}: its files would mix; pick a folder "
            "outside it"
        )


def safe_name(name: object, what: str) -> str:
    """`name` when it is a plain file name (no separator, not '.'/'..', no leading dot or NUL):
    a name from a user or a file never leaves the folder it is joined to."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or (os.altsep and os.altsep in name)
    ):
        raise UserError(f"{what} {name!r} is not a plain name (no '/', no leading '.')")
    return name
