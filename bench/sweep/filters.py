"""`bench show --filter`: a small, safe row filter (no eval, no pandas query).

Grammar: `COL OP VALUE` clauses joined by `and` / `or` (`and` binds tighter), where OP is one of
`== != < <= > >=` and VALUE is a number, a quoted string, or a bare word (read as a string):

    status == ok and n_layer >= 2 or message != ""
"""

from __future__ import annotations

import re

from core import UserError

OPS = ("==", "!=", "<=", ">=", "<", ">")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|<=|>=|<|>)
      | (?P<str>"[^"]*"|'[^']*')
      | (?P<word>[^\s"'<>=!]+)
    )""",
    re.VERBOSE,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
GRAMMAR = "COL OP VALUE [and|or COL OP VALUE ...], OP one of == != < <= > >="


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise UserError(f"bad --filter {text!r}: cannot read {text[pos:].strip()!r}; {GRAMMAR}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def parse(text: str) -> list[list[tuple[str, str, object]]]:
    """The filter as OR of ANDs of (column, op, value) clauses; UserError on bad syntax."""
    toks = _tokens(text)
    if not toks:
        raise UserError(f"bad --filter {text!r}: it is empty; {GRAMMAR}")
    groups: list[list[tuple[str, str, object]]] = [[]]
    i = 0
    while True:
        if i + 3 > len(toks):
            raise UserError(f"bad --filter {text!r}: incomplete clause; {GRAMMAR}")
        (k1, col), (k2, op), (k3, raw) = toks[i : i + 3]
        if k1 != "word" or not _NAME.match(col) or k2 != "op" or k3 == "op":
            got = " ".join(t for _, t in toks[i : i + 3])
            raise UserError(f"bad --filter {text!r}: {got!r} is not COL OP VALUE; {GRAMMAR}")
        groups[-1].append((col, op, _value(k3, raw)))
        i += 3
        if i == len(toks):
            return groups
        kind, word = toks[i]
        if kind != "word" or word.lower() not in ("and", "or"):
            raise UserError(f"bad --filter {text!r}: expected and/or before {word!r}; {GRAMMAR}")
        if word.lower() == "or":
            groups.append([])
        i += 1


def _value(kind: str, raw: str) -> object:
    if kind == "str":
        return raw[1:-1]
    try:
        return float(raw)
    except ValueError:
        return raw


def apply(df, text: str):
    """The rows of DataFrame `df` that match filter `text`."""
    import pandas as pd

    groups = parse(text)
    missing = sorted({c for g in groups for c, _, _ in g if c not in df.columns})
    if missing:
        raise UserError(f"bad --filter {text!r}: unknown column(s) {', '.join(missing)}")
    keep = pd.Series(False, index=df.index)
    for group in groups:
        part = pd.Series(True, index=df.index)
        for col, op, value in group:
            part &= _compare(df[col], op, value)
        keep |= part
    return df[keep]


def _compare(series, op: str, value):
    import operator

    import pandas as pd

    fn = {
        "==": operator.eq,
        "!=": operator.ne,
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
    }[op]
    if isinstance(value, float):
        return fn(pd.to_numeric(series, errors="coerce"), value)
    text = series.map(lambda v: "" if v is None or v != v else str(v))
    if isinstance(value, str) and value.lower() in ("true", "false"):
        text = text.str.lower()
        value = value.lower()
    return fn(text, value)
