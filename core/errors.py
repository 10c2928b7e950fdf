"""UserError and the command-line plumbing that turns it into one `error:` line and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


class UserError(ValueError):
    """Bad input from the user: printed by every CLI as one `error: ...` line, exit code 2.

    The one error type of steptime's command lines (train, bench, timemodel). Library code raises
    it for anything the user typed or pointed at (a flag, a file, a config); programming errors stay
    ordinary exceptions.
    """


class ArgParser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as UserError) and every default shown in --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse's usage dump is noise on a bad flag
        raise UserError(f"{message} (see '{self.prog} --help')")


def run_cli(
    body: Callable[[Sequence[str]], int | None],
    argv: Sequence[str] | None,
    *,
    interrupted: str = "",
) -> int:
    """Run a CLI body with steptime's one error path.

    UserError (parsing included) and OSError print one `error: ...` line and return 2; Ctrl-C prints
    one line (plus `interrupted`, e.g. how to resume) and returns 130. Anything else is a bug and
    keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(body(argv) or 0)
    except UserError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        what = e.strerror or (str(e).splitlines()[0] if str(e) else type(e).__name__)
        print(f"error: {what}{where}", file=sys.stderr)
        return 2
    except RecursionError:  # a reader missed by core.files.read_json met a nesting bomb
        print("error: input nested too deeply to read", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted{'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        return 130
