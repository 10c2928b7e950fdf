"""core.files and core.owner: the shared mechanisms of issue 23, tested directly."""

from __future__ import annotations

import json
import os

import pytest

from core import UserError, atomic_write, owner, read_json, read_jsonl
from core.files import decode_json, open_append, read_bytes


@pytest.mark.parametrize(
    "raw", [b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe", b"", b"{", b"nan"], ids=repr
)
def test_every_decode_failure_is_a_json_decode_error(raw):
    with pytest.raises(json.JSONDecodeError):
        decode_json(raw)


def test_read_json_names_the_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[" * 100_000)
    with pytest.raises(UserError, match=r"x.json: not valid JSON \(nested too deeply"):
        read_json(str(p))
    with pytest.raises(UserError, match="cannot read"):
        read_json(str(tmp_path / "missing.json"))


def test_read_jsonl_skips_bad_records_with_one_warning(tmp_path, capsys):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n[[[[\n\xff\n{"a": 2}\n"text"\n')
    recs = read_jsonl(str(p), check=lambda r: None if isinstance(r, dict) else "not an object")
    assert recs == [{"a": 1}, {"a": 2}]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 3 unreadable record(s)" in err[0]


def test_reads_refuse_fifos_and_with_nofollow_symlinks(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        read_bytes(str(fifo))  # returns at once: no blocking open
    (tmp_path / "t").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "t")
    assert read_bytes(str(tmp_path / "l")) == b"x"
    with pytest.raises(UserError, match="symlink"):
        read_bytes(str(tmp_path / "l"), nofollow=True)


def test_appends_and_atomic_writes_never_follow_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "log").symlink_to(victim)
    with pytest.raises(UserError, match="symlink"):
        open_append(str(tmp_path / "log"))
    target = tmp_path / "out.json"
    (tmp_path / f"out.json.tmp.{os.getpid()}").symlink_to(victim)  # the predictable temp name
    atomic_write(str(target), "new")
    assert victim.read_text() == "keep" and target.read_text() == "new"
    (tmp_path / "d").symlink_to(tmp_path)
    with pytest.raises(UserError, match="symlink"):
        atomic_write(str(tmp_path / "d" / "x"), "y", inside=str(tmp_path))


def test_atomic_write_keeps_ctrl_c_and_a_full_disk_apart_from_torch_save(tmp_path):
    import errno

    def interrupted(fh):
        fh.write(b"x")

    class Boom:
        def __init__(self, e):
            self.e = e

        def __call__(self, fh):
            try:
                raise self.e
            except BaseException as e:
                fh.error = e  # what _Recording does when the write itself raises
                raise RuntimeError("enforce fail at inline_container.cc:1") from None

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "a"), Boom(KeyboardInterrupt()))
    with pytest.raises(UserError, match="No space left on device"):
        atomic_write(str(tmp_path / "a"), Boom(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    assert os.listdir(tmp_path) == []
    atomic_write(str(tmp_path / "a"), interrupted)
    assert (tmp_path / "a").read_bytes() == b"x"


def test_owner_is_reentrant_in_one_process_and_leaves_no_trace_unused(tmp_path):
    d = tmp_path / "d"
    owner.own(str(d))
    owner.own(str(d))
    assert owner.holds(str(d))
    owner.release(str(d))
    assert owner.holds(str(d))
    owner.release(str(d))
    assert not owner.holds(str(d)) and os.listdir(d) == []  # nothing written: no lock file


def test_nesting_and_plain_names(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    assert owner.kind_of(str(run)) == "train run"
    with pytest.raises(UserError, match="lies inside the train run"):
        owner.check_not_nested(str(run / "ckpts" / "4"), "--out")
    owner.check_not_nested(str(run / "cooldown_8"), "--out", allow=str(run))
    for bad in ("../x", "a/b", ".hidden", "", "..", None, 5):
        with pytest.raises(UserError):
            owner.safe_name(bad, "name")
    assert owner.safe_name("abc-1_2.x", "name") == "abc-1_2.x"
