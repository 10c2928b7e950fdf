"""tests/train setup: real model and optimizer when present, `_fakes` otherwise (reported)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fakes  # noqa: E402

_fakes.install()


def pytest_report_header(config):
    if _fakes.INSTALLED:
        return f"tests/train: using stand-ins for missing {', '.join(_fakes.INSTALLED)}"
    return "tests/train: real model.transformer and kernels.FusedAdamW"
