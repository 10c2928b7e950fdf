"""`bench show DIR`: the results table, sorted/filtered with pandas."""

from __future__ import annotations

import os

DEFAULT_COLUMNS = [
    "config_id",
    "status",
    "n_layer",
    "n_embd",
    "n_head",
    "batch_size",
    "sequence_length",
    "params",
    "step_ms_median",
    "tokens_per_s",
    "mfu",
    "loss_end",
    "timed_fraction",
    "message",
]


def load_frame(out_dir: str):
    import pandas as pd

    from .results import load_rows

    if not os.path.isfile(os.path.join(out_dir, "results.jsonl")):
        raise FileNotFoundError(f"no results.jsonl in {out_dir}")
    return pd.DataFrame(load_rows(out_dir))


def format_table(
    df, sort: str | None = None, query: str | None = None, columns: list[str] | None = None
) -> str:
    """The table as text; raises ValueError with a one-line reason for a bad column or query."""
    if query:
        try:
            df = df.query(query)
        except Exception as e:  # noqa: BLE001  (pandas raises many types for a bad expression)
            raise ValueError(f"bad --filter {query!r}: {e}".splitlines()[0]) from None
    cols = columns or [c for c in DEFAULT_COLUMNS if c in df.columns]
    missing = [c for c in cols + ([sort] if sort else []) if c not in df.columns]
    if missing:
        raise ValueError(f"unknown column(s): {', '.join(missing)}")
    if sort:
        df = df.sort_values(sort)
    if df.empty:
        return "(no rows)"
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")
