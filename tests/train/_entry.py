"""Subprocess entry for the train CLI in tests (DDP via torchrun): installs `_fakes` only where the
real model/kernels are missing, then runs `train.cli.main`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fakes  # noqa: E402

_fakes.install()
from train.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
