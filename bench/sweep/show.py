"""`bench show DIR`: the results table, filtered (`bench.sweep.filters`) and sorted."""

from __future__ import annotations

import math
import numbers

from core import UserError

DEFAULT_COLUMNS = [
    "config_id",
    "repeat",
    "status",
    "n_layer",
    "n_embd",
    "n_head",
    "batch_size",
    "sequence_length",
    "params",
    "step_ms_median",
    "step_spread",
    "host_ms",
    "tokens_per_s",
    "mfu",
    "val_loss",
    "timed_fraction",
    "message",
]


def load_frame(out_dir: str):
    import pandas as pd

    from bench.sweep.results import has_results, load_rows

    if not has_results(out_dir):
        raise UserError(f"no bench results in {out_dir} (expected results.jsonl or rows/*.jsonl)")
    return pd.DataFrame(load_rows(out_dir))


def sort_order(values: list, descending: bool = False) -> list[int]:
    """Row positions sorting `values` stably: numbers by value, then text, then anything else by
    its text; missing values (None, NaN) last either way. A column can mix types (a row file
    written by another version, a hand-edited row), and pandas cannot compare int with str."""

    def rank(v):
        if v is None:
            return None
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_":
            return None if math.isnan(float(v)) else (0, float(v), "")
        return (1, 0.0, str(v))

    keyed = [(rank(v), i) for i, v in enumerate(values)]
    present = sorted((k for k in keyed if k[0] is not None), key=lambda k: k[0], reverse=descending)
    return [i for _, i in present] + [i for k, i in keyed if k is None]


def format_table(
    df,
    sort: str | None = None,
    query: str | None = None,
    columns: list[str] | None = None,
    descending: bool = False,
) -> str:
    """The table as text. `sort` "-col" sorts descending, like `descending=True`.

    Raises UserError with a one-line reason for a bad column or filter.
    """
    from bench.sweep.filters import apply

    if query:
        df = apply(df, query)
    if sort and sort.startswith("-"):
        sort, descending = sort[1:], True
    cols = columns or [c for c in DEFAULT_COLUMNS if c in df.columns]
    missing = [c for c in cols + ([sort] if sort else []) if c not in df.columns]
    if missing:
        raise UserError(f"unknown column(s): {', '.join(missing)} (see the columns of results.csv)")
    if sort:
        df = df.iloc[sort_order(list(df[sort]), descending)]
    if df.empty:
        return "(no rows)"
    table = df[cols]
    table = table.where(table.notna(), float("nan"))  # JSON nulls print as NaN, not None
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
