"""`python -m bench ...` == the `bench` console script."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
