"""`python -m train` (and `torchrun ... -m train`): the trainer CLI."""

from train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
