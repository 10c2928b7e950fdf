"""`python -m timemodel` entry point."""

from timemodel.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
