"""Results dir: atomic rewrite, idempotent upsert, merge dedupe, and the merge/show CLIs."""

from __future__ import annotations

import math

import pandas as pd

from bench import results
from bench.cli import main


def _row(cid, status="ok", ms=1.0):
    return {
        "config_id": cid,
        "status": status,
        "n_layer": 1,
        "step_ms_median": ms,
        "mfu": math.nan,
        "message": "",
    }


def test_upsert_is_idempotent_and_keeps_position():
    rows = [_row("a"), _row("b")]
    once = results.upsert(rows, _row("a", ms=5.0))
    assert [r["config_id"] for r in once] == ["a", "b"] and once[0]["step_ms_median"] == 5.0
    assert results.upsert(once, _row("a", ms=5.0)) == once
    assert [r["config_id"] for r in results.upsert(once, _row("c"))] == ["a", "b", "c"]


def test_write_then_load_round_trip(tmp_path):
    d = str(tmp_path / "r")
    results.write_rows(d, [_row("a"), _row("b", "oom")])
    back = results.load_rows(d)
    assert [r["config_id"] for r in back] == ["a", "b"]
    assert back[0]["mfu"] is None  # NaN is written as null, never as invalid JSON
    df = pd.read_csv(tmp_path / "r" / "results.csv")
    assert list(df["status"]) == ["ok", "oom"] and df["mfu"].isna().all()
    assert (tmp_path / "r" / "results.parquet").is_file()
    assert not [p for p in (tmp_path / "r").iterdir() if ".tmp" in p.name]
    assert results.done_ids(back) == {"a", "b"}


def test_merge_cli_dedupes(tmp_path, capsys):
    a, b, out = (str(tmp_path / n) for n in ("a", "b", "out"))
    results.write_rows(a, [_row("x"), _row("y")])
    results.write_rows(b, [_row("y", ms=9.0), _row("z")])
    assert main(["merge", a, b, "--out", out]) == 0
    rows = results.load_rows(out)
    assert sorted(r["config_id"] for r in rows) == ["x", "y", "z"]
    assert next(r for r in rows if r["config_id"] == "y")["step_ms_median"] == 9.0
    assert (
        main(["show", out, "--sort", "step_ms_median", "--columns", "config_id,step_ms_median"])
        == 0
    )
    text = capsys.readouterr().out
    assert text.index("x") < text.index("y") and "9" in text
    assert main(["show", out, "--filter", "step_ms_median > 5", "--columns", "config_id"]) == 0
    assert capsys.readouterr().out.split() == ["config_id", "y"]


def test_show_bad_input_is_one_line(tmp_path, capsys):
    d = str(tmp_path / "r")
    results.write_rows(d, [_row("a")])
    assert main(["show", d, "--sort", "nope"]) == 2
    assert main(["show", d, "--filter", "((("]) == 2
    assert main(["merge", str(tmp_path / "missing"), "--out", d]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error: ") for e in err)
