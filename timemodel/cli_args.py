"""Argument-parser pieces shared by the timemodel subcommands."""

from __future__ import annotations

import argparse

from core import ArgParser
from core.errors import HelpFormat


class Formatter(argparse.RawDescriptionHelpFormatter, HelpFormat):
    """Descriptions keep their line breaks; a flag's help shows its default once (not for
    required or unset flags, nor when the help already states it)."""


class Parser(ArgParser):
    """ArgParser (one-line errors) with `Formatter` for the command and every subcommand."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)


def opt(p: argparse.ArgumentParser, flag: str, default, metavar: str, help: str, **kw) -> None:
    """A flag that takes a value; an int or float default also sets the type."""
    if "type" not in kw and type(default) in (int, float):
        kw["type"] = type(default)
    p.add_argument(flag, default=default, metavar=metavar, help=help, **kw)
