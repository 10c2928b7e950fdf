"""UserError and the command-line plumbing that turns it into one `error:` line and exit 2."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence


class UserError(ValueError):
    """Bad input from the user: printed by every CLI as one `error: ...` line, exit code 2.

    The one error type of steptime's command lines (train, bench, timemodel). Library code raises
    it for anything the user typed or pointed at (a flag, a file, a config); programming errors stay
    ordinary exceptions.
    """


class HelpFormat(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, once: not for required flags, unset (None) ones, or a help text that
    already states its default."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, argparse.SUPPRESS) or "(default" in text:
            return text
        return super()._get_help_string(action)


class ArgParser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as UserError), every default shown once in --help,
    and a misspelt flag named as such, with the nearest real one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormat)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse's usage dump is noise on a bad flag
        raise UserError(f"{message} (see '{self.prog} --help')")

    def check_flags(self, argv: Sequence[str]) -> None:
        """UserError for the first `--flag` this parser does not know (abbreviations of exactly
        one flag are fine, as argparse takes them), with a suggestion. Call it before parsing a
        command line whose positionals could swallow the value of a misspelt flag."""
        known = sorted(self._option_string_actions)
        for tok in argv:
            if tok == "--":
                return
            if not tok.startswith("--") or len(tok) < 3:
                continue
            name = tok.split("=", 1)[0]
            if name in known or len([k for k in known if k.startswith(name)]) == 1:
                continue
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise UserError(f"unknown flag {name}{hint} (see '{self.prog} --help')")


def run_cli(
    body: Callable[[Sequence[str]], int | None],
    argv: Sequence[str] | None,
    *,
    interrupted: str | Callable[[], str] = "",
) -> int:
    """Run a CLI body with steptime's one error path.

    UserError (parsing included) and OSError print one `error: ...` line and return 2; Ctrl-C prints
    one line (plus `interrupted`, e.g. how to resume; a callable is asked at that moment, so it
    can name the run folder) and returns 130. Anything else is a bug and keeps its traceback.
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
        how = interrupted() if callable(interrupted) else interrupted
        print(f"interrupted{'; ' + how if how else ''}", file=sys.stderr)
        return 130
