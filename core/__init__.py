"""The ground floor: stdlib-only helpers every package may import (timemodel included).

errors: UserError, the one error type of the command lines, and the CLI plumbing around it;
files: all-or-nothing writes, symlink-safe appends and reads, one JSON reader; owner: one writer
per folder (an flock inside it) and no folder inside another; stats: small numeric helpers.
"""

from core.errors import ArgParser, UserError, run_cli
from core.files import atomic_write, read_json, read_jsonl
from core.stats import percentile

__all__ = [
    "ArgParser",
    "UserError",
    "atomic_write",
    "percentile",
    "read_json",
    "read_jsonl",
    "run_cli",
]
