"""Results dir: per-writer rows, atomic views, retries, merge dedupe, and the merge/show CLIs."""

from __future__ import annotations

import errno
import math
import os

import pandas as pd
import pytest

from bench.cli import main
from bench.sweep import results
from core import UserError


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


def _append_many(out: str, tag: str, n: int) -> None:
    for i in range(n):
        results.append_row(out, _row(f"{tag}{i:03d}"))


def test_concurrent_writers_lose_no_row(tmp_path):
    """Four processes append 15 rows each into one folder: all 60 survive, views included."""
    import multiprocessing as mp

    out = str(tmp_path / "r")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(out, t, 15)) for t in "abcd"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = [r["config_id"] for r in results.load_rows(out)]
    assert len(ids) == 60 and len(set(ids)) == 60
    assert len(pd.read_csv(tmp_path / "r" / "results.csv")) == 60  # the last view saw everyone
    assert not list((tmp_path / "r").rglob("*.tmp.*"))


def test_latest_write_of_a_key_wins_and_torn_lines_are_skipped(tmp_path):
    out = tmp_path / "r"
    results.append_row(str(out), _row("a", "error"))
    results.append_row(str(out), {**_row("a"), "repeat": 1})
    results.append_row(str(out), _row("a", "ok", ms=3.0))
    (own,) = (out / "rows").glob("*.jsonl")
    with open(own, "a") as fh:
        fh.write('{"config_id": "b", "sta')  # a writer killed mid-line
    results.append_row(str(out), _row("c"))
    rows = results.load_rows(str(out))
    assert [(r["config_id"], r.get("repeat", 0)) for r in rows] == [("a", 0), ("a", 1), ("c", 0)]
    assert rows[0]["status"] == "ok" and rows[0]["step_ms_median"] == 3.0


def test_retry_policy_of_final_statuses():
    rows = [_row(c, s) for c, s in zip("abcde", ("ok", "error", "timeout", "oom", "nan"))]
    assert results.final_keys(rows) == {("a", 0), ("d", 0), ("e", 0)}
    assert results.final_keys(rows, ("error", "timeout", "oom", "nan")) == {("a", 0)}


def test_a_row_without_config_id_is_a_clean_error(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "results.jsonl").write_text('{"status": "ok"}\n')
    with pytest.raises(UserError, match="line 1 has no config_id"):
        results.load_rows(str(d))
    (d / "results.jsonl").write_text("not json\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        results.load_rows(str(d))


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_unwritable_folder_is_one_line_naming_the_path(tmp_path, monkeypatch, errno_):
    """Disk full / read-only / no permission: one line with the path, no temp file, rows kept."""
    out = tmp_path / "r"
    results.append_row(str(out), _row("a"))
    real_write = os.write

    def failing_write(fd, data):
        real_write(fd, data[: len(data) // 2])  # a partial write, then the disk is full
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(UserError, match=f"cannot write {out}.*{os.strerror(errno_)}"):
        results.append_row(str(out), _row("b"))
    monkeypatch.undo()
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno_, "boom")))
    with pytest.raises(UserError, match=f"cannot write {out}"):
        results.write_rows(str(out), [_row("z")])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not list(out.rglob("*.tmp.*"))
    assert [r["config_id"] for r in results.load_rows(str(out))] == ["a"]


def test_show_sorts_descending_and_filters_safely(tmp_path, capsys):
    d = str(tmp_path / "r")
    results.write_rows(d, [_row("x", ms=1.0), _row("y", ms=9.0), _row("z", "oom", ms=5.0)])
    cols = ["--columns", "config_id"]
    for args in (["-s", "-step_ms_median"], ["--sort", "step_ms_median", "--desc"]):
        assert main(["show", d, *args, *cols]) == 0
        assert capsys.readouterr().out.split() == ["config_id", "y", "z", "x"]
    flt = "status == ok and step_ms_median >= 2 or status == 'oom'"
    assert main(["show", d, "--filter", flt, *cols]) == 0
    assert capsys.readouterr().out.split() == ["config_id", "y", "z"]
    evil = tmp_path / "pwned"
    for text in (f'@df.to_csv("{evil}") == 0', "__import__('os').system('touch x')", "a ==", "a"):
        assert main(["show", d, "--filter", text]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: bad --filter"), err
    assert not evil.exists()
