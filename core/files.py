"""All-or-nothing file writes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from core.errors import UserError


def atomic_write(path: str, data: str | bytes | Callable[[Any], None]) -> None:
    """Write `path` all-or-nothing: a temp file beside it, fsync, then `os.replace`.

    `data` is text, bytes, or a callable that writes into the open binary file (e.g. torch.save).
    On any failure the temp file is removed and the old `path` is left untouched; an OSError becomes
    a one-line UserError naming the path (a full disk, a read-only folder, a file where a folder
    should be).
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            why = e.strerror or str(e).splitlines()[0]
            raise UserError(f"cannot write {path}: {why}") from None
        if isinstance(e, RuntimeError) and "inline_container" in str(e):  # torch.save's disk error
            raise UserError(f"cannot write {path}: {str(e).splitlines()[0]}") from None
        raise
