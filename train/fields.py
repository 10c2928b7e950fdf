"""`doc_field`: a dataclass field whose metadata carries its one-line doc (the CLI's help text).

Standard library only. The flag, its default and its doc come from one place: the field.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def doc_field(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002  (argparse's own word)
    return field(default=default, metadata={"help": help, **kw})
