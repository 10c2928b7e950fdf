"""Reliability round 3 (issue 23): one owner per folder, preemption never loses a checkpoint, no
write or read through a symlink, bad records skipped with one warning.

One test (or more) per numbered item; the single-line bad inputs of items 1, 6, 8,
11-15, 17, 20, 21 are rows of the table in tests/test_reliability.py. Most tests call the CLIs'
`main` in this process (fast); item 1 runs two real processes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.sweep import results, status

ROOT = Path(__file__).resolve().parents[2]
T = ["--preset", "tiny", "--n-layer", "1", "--batch-size", "2", "--acc-steps", "1"]
T += ["--warmup-steps", "0", "--eval-batches", "1", "--no-progress"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _train(argv, capsys) -> tuple[int, str]:
    from train.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def _bench(argv, capsys) -> tuple[int, str, str]:
    from bench.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return rc, cap.out, cap.err


def _steps(run: Path, kind: str = "train") -> list[int]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["step"] for r in recs if r.get("kind") == kind]


def _one_error(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _snapshot(folder: Path) -> dict:
    """Every file under `folder` (not following links) with its bytes: 'nothing written'."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            out[str(p)] = None if p.is_symlink() else p.read_bytes()
    return out


# ------------------------------------------------------------------------ 1: one owner per folder


@pytest.mark.slow
def test_1_two_auto_resume_runs_on_one_out_have_one_owner(tmp_path):
    """Two real `train --auto-resume` processes on one --out: the second stops with one line
    naming the first one's pid and host; the first finishes with every step exactly once."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", *T, "--iterations", "1500", "--auto-resume"]
    cmd += ["--scheduler", "constant", "--log-interval", "500", "--eval-interval", "0"]
    cmd += ["--out", str(out)]
    first = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        assert first.poll() is None, first.communicate()[1]
        time.sleep(0.05)
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    line = _one_error(second.stderr)
    assert f"is in use by pid {first.pid} on " in line, line
    assert _steps(out) == list(range(1, 1501))
    assert json.loads((out / "summary.json").read_text())["final_step"] == 1500


def test_1_second_owner_of_a_folder_is_refused_while_the_first_lives(tmp_path):
    from core import UserError, owner

    folder = tmp_path / "f"
    code = "import sys, time; from core import owner; owner.own(sys.argv[1]); print(1, flush=True)"
    code += "; time.sleep(30)"
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, env=_env()
    )
    try:
        assert p.stdout.readline().strip() == b"1"
        with pytest.raises(UserError, match=f"in use by pid {p.pid} on "):
            owner.own(str(folder))
    finally:
        p.kill()
        p.wait()
    owner.own(str(folder))  # the kernel released the dead holder's lock: no stale lock
    owner.release(str(folder))


@pytest.mark.slow
def test_1_two_identical_sweeps_measure_each_config_once(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "sweep", "--minutes", "0.005", "--preset", "tiny"]
    cmd += ["--n-head", "2", "--batch-size", "4", "--n-layer", "1,2,3", "--no-progress"]
    cmd += ["--out", str(out)]
    procs = [
        subprocess.Popen(
            cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    counts: dict = {}
    for f in (out / "rows").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            key = json.loads(line)["config_id"]
            counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 3 and set(counts.values()) == {1}, counts  # none measured twice


def test_1_config_claim_waits_and_reuses_the_other_sweeps_row(tmp_path):
    out = tmp_path / "s"
    spec = {"config_id": "abc", "repeat": 0}
    with status.config_claim(str(out), spec) as row:
        assert row is None  # nobody held it: measure
    code = (
        "import sys, time\n"
        "from bench.sweep import results, status\n"
        "with status.config_claim(sys.argv[1], {'config_id': 'abc', 'repeat': 0}):\n"
        "    print(1, flush=True); time.sleep(1.0)\n"
        "    results.append_row(sys.argv[1], {'config_id': 'abc', 'status': 'ok', 'n': 1})\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, env=_env())
    assert p.stdout.readline().strip() == b"1"
    with status.config_claim(str(out), spec) as row:
        assert row is not None and row["n"] == 1  # waited, then took the other's row
    p.wait()


# ------------------------------------------------- 2, 3: preemption never loses a checkpoint


def test_2_auto_resume_killed_before_its_first_checkpoint_starts_over(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*T, "--iterations", "4", "--scheduler", "constant", "--out", out]
    assert _train(args, capsys)[0] == 0
    for name in ("latest", "ckpts"):  # as if killed before the first checkpoint
        if (out / name).exists():
            import shutil

            shutil.rmtree(out / name)
    (out / "summary.json").unlink()
    rc, err = _train([*args, "--auto-resume"], capsys)
    assert rc == 0, err
    assert "starting over" in err
    assert _steps(out) == [1, 2, 3, 4]


def test_3_kill_between_the_permanent_and_the_latest_checkpoint_keeps_both(
    tmp_path, capsys, monkeypatch
):
    from train import checkpoint as ckpt_io

    out = tmp_path / "run"
    args = [*T, "--iterations", "6", "--scheduler", "constant", "--out", out]
    args += ["--latest-ckpt-interval", "2", "--permanent-ckpt-interval", "2"]
    real = ckpt_io.save_copy

    def killed(*a, **k):  # SIGKILL/Ctrl-C right after ckpts/2 was written
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io, "save_copy", killed)
    rc, err = _train(args, capsys)
    assert rc == 130, err
    assert (out / "ckpts" / "2" / "ckpt.pt").is_file()  # the permanent one came first
    monkeypatch.setattr(ckpt_io, "save_copy", real)
    rc, err = _train([*args, "--auto-resume"], capsys)  # resumes from ckpts/2, the newest
    assert rc == 0, err
    assert all((out / "ckpts" / str(s) / "ckpt.pt").is_file() for s in (2, 4, 6))
    assert _steps(out) == list(range(1, 7))


# ------------------------------------------------------------- 4: the cooldown recipe resumes


@pytest.mark.parametrize("auto", [False, True], ids=["same-command", "auto-resume"])
def test_4_killed_cooldown_recipe_resumes_where_it_stopped(tmp_path, capsys, monkeypatch, auto):
    from train import cooldown

    out = tmp_path / "run"
    args = [*T, "--cooldown-targets", "8,12", "--wsd-fract-decay", "0.5", "--out", out]
    args += ["--latest-ckpt-interval", "2"] + (["--auto-resume"] if auto else [])
    real = cooldown.cooldown_from
    calls = []

    def second_cooldown_killed(payload, cfg):
        calls.append(cfg.io.out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(payload, cfg)

    monkeypatch.setattr(cooldown, "cooldown_from", second_cooldown_killed)
    rc, err = _train(args, capsys)
    assert rc == 130, err
    assert (out / "cooldown_8" / "summary.json").is_file()
    assert not (out / "cooldown_table.csv").exists()
    monkeypatch.setattr(cooldown, "cooldown_from", real)
    rc, err = _train(args, capsys)
    assert rc == 0, err
    table = (out / "cooldown_table.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in table[1:]] == ["8", "12", "total"]
    assert _steps(out / "cooldown_12")[-1] == 12 and _steps(out / "cooldown_8")[-1] == 8
    assert _steps(out) == list(range(1, 7))  # the stable run: every step once
    other = ["--cooldown-targets", "8,16", "--wsd-fract-decay", "0.5", "--out", out]
    rc, err = _train([*T, *other], capsys)
    assert rc == 2 and "recipe with other" in _one_error(err)


# -------------------------------------------------------------------------- 5: train prepare


def _prepare(argv, capsys) -> tuple[int, str]:
    from train.prepare import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def test_5_prepare_interrupted_leaves_no_scratch_and_a_rerun_removes_old_ones(
    tmp_path, capsys, monkeypatch
):
    from train import prepare

    text = tmp_path / "a.txt"
    text.write_text("hello world\n" * 500)
    out = tmp_path / "ds"
    out.mkdir()
    (out / ".tokens.tmp.999999").write_bytes(b"x" * 100)  # a killed older version's scratch
    (out / ".prepare.tmp.999998").mkdir()  # a SIGKILLed build
    real = prepare._write_splits

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_write_splits", interrupted)
    rc, err = _prepare([text, "--out", out, "--workers", "1"], capsys)
    assert rc == 130 and "interrupted" in err
    assert list(out.iterdir()) == []  # no scratch, no build folder, no lock left
    monkeypatch.setattr(prepare, "_write_splits", real)
    rc, err = _prepare([text, "--out", out, "--workers", "1"], capsys)
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [".steptime.lock", "meta.json", "train.bin", "val.bin"]


def test_5_prepare_sigterm_removes_its_build_folder(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello world, " * 2_000_000)  # long enough to be caught mid-build
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "train", "prepare", str(text), "--out", str(out), "--workers", "1"]
    p = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(out.glob(".prepare.tmp.*")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert "Traceback" not in err
    assert not list(out.glob(".prepare.tmp.*")) and not list(out.glob(".tokens*"))


def test_5_prepare_overwrite_on_a_full_disk_keeps_the_old_dataset(tmp_path, capsys, monkeypatch):
    from core import UserError
    from train import prepare

    text = tmp_path / "a.txt"
    text.write_text("hello world\n" * 500)
    out = tmp_path / "ds"
    assert _prepare([text, "--out", out, "--workers", "1"], capsys)[0] == 0
    before = _snapshot(out)
    text.write_text("other text entirely\n" * 900)
    real = prepare.atomic_write

    def full_disk(path, data, **k):
        if str(path).endswith("train.bin"):  # val.bin was written, train.bin does not fit
            raise UserError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}")
        return real(path, data, **k)

    monkeypatch.setattr(prepare, "atomic_write", full_disk)
    rc, err = _prepare([text, "--out", out, "--workers", "1", "--overwrite"], capsys)
    assert rc == 2 and "No space left on device" in _one_error(err)
    assert _snapshot(out) == before  # the old train.bin, val.bin and meta.json, together


# ---------------------------------------------------------------- 6: bench merge


def test_6_merge_writes_sweep_json_and_only_its_rows(tmp_path, capsys):
    from bench.sweep.options import SweepOptions, check_folder_settings, measurement_settings

    dirs = []
    for i in range(2):
        d = tmp_path / f"s{i}"
        d.mkdir()
        check_folder_settings(
            str(d), measurement_settings(SweepOptions(str(d), minutes_per_config=0.1))
        )
        results.append_row(str(d), {"config_id": f"c{i}", "status": "ok"})
        dirs.append(d)
    out = tmp_path / "m"
    rc, _, err = _bench(["merge", *dirs, "--out", out], capsys)
    assert rc == 0, err
    assert json.loads((out / "sweep.json").read_text()) == json.loads(
        (dirs[0] / "sweep.json").read_text()
    )
    assert sorted(r["config_id"] for r in results.load_rows(str(out))) == ["c0", "c1"]
    rc, _, err = _bench(["merge", *dirs, "--out", dirs[0]], capsys)  # into an existing sweep
    assert rc == 2 and "already holds a sweep" in _one_error(err)
    assert [r["config_id"] for r in results.load_rows(str(dirs[0]))] == ["c0"]


def test_6_merge_out_empty_writes_nothing_in_the_cwd(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "s"
    results.append_row(str(d), {"config_id": "c", "status": "ok"})
    before = sorted(os.listdir(tmp_path))
    rc, _, err = _bench(["merge", d, "--out", ""], capsys)
    assert rc == 2 and "--out must name a folder" in _one_error(err)
    assert sorted(os.listdir(tmp_path)) == before


# ------------------------------------------------------------------ 7: no write through a link


def test_7_row_file_symlink_is_refused_and_its_target_untouched(tmp_path):
    from core import UserError

    out = tmp_path / "s"
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    (out / "rows").mkdir(parents=True)
    link = Path(results._writer_file(str(out)))
    link.symlink_to(target)
    with pytest.raises(UserError, match="symlink"):
        results.append_row(str(out), {"config_id": "a", "status": "ok"})
    assert target.read_text() == "precious\n"


def test_7_work_log_symlink_is_refused_before_the_worker_starts(tmp_path):
    from core import UserError

    out = tmp_path / "s"
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    (out / ".work").mkdir(parents=True)
    (out / ".work" / "abc.log").symlink_to(target)
    with pytest.raises(UserError, match="symlink"):
        with status.config_claim(str(out), {"config_id": "abc", "repeat": 0}):
            pass
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("entry", ["metrics.jsonl", "latest", "ckpts", "summary.json"])
def test_7_symlinked_entries_of_a_run_are_refused(tmp_path, capsys, entry):
    out = tmp_path / "run"
    args = [*T, "--iterations", "2", "--scheduler", "constant", "--out", out]
    assert _train(args, capsys)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    victim = out / entry
    if victim.is_dir():
        import shutil

        shutil.rmtree(victim)
    elif victim.exists():
        victim.unlink()
    victim.symlink_to(elsewhere if entry in ("latest", "ckpts") else elsewhere / "f")
    before = _snapshot(elsewhere)
    for extra in (["--auto-resume"], ["--overwrite"], ["--resume-from", out, "--iterations", "4"]):
        rc, err = _train([*args, *extra], capsys)
        assert rc == 2, (extra, err)
        assert "symlink" in _one_error(err) or "no ckpt.pt" in err
        assert _snapshot(elsewhere) == before


def test_7_planted_build_folder_link_is_not_followed(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("hello world\n" * 300)
    out = tmp_path / "ds"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in (f".prepare.tmp.{os.getpid()}", f".tokens.tmp.{os.getpid()}"):
        (out / name).symlink_to(elsewhere)
    rc, err = _prepare([text, "--out", out, "--workers", "1"], capsys)
    assert rc == 0, err
    assert list(elsewhere.iterdir()) == []


# -------------------------------------------------- 8, 9: names and records stay in their folder


def test_8_9_status_never_reads_or_shows_files_outside_its_folder(tmp_path, capsys):
    out = tmp_path / "s"
    secret = tmp_path / "secret.log"
    secret.write_text("SECRET-LINE\n")
    results.append_row(str(out), {"config_id": "../../secret", "status": "error", "message": "m"})
    results.append_row(str(out), {"config_id": "abc", "status": "error", "message": "m"})
    (out / ".work").mkdir(exist_ok=True)
    (out / ".work" / "abc.log").symlink_to(secret)
    (out / ".jobs").mkdir()
    rec = {"config_id": "abc", "job_id": "1", "executor": "slurm", "submitted": 1.0}
    rec.update(stderr=str(secret), stdout=str(out / ".." / "secret.log"))
    (out / ".jobs" / "submit-1.jsonl").write_text(json.dumps(rec) + "\n")
    rc, shown, err = _bench(["status", out], capsys)
    assert rc == 0, err
    assert "SECRET-LINE" not in shown + err


def test_8_cooldown_branch_stays_inside_its_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*T, "--iterations", "8", "--scheduler", "wsd", "--wsd-fract-decay", "0.5", "--out", out]
    assert _train(args, capsys)[0] == 0
    rc, err = _train(
        ["--cooldown-from", out / "ckpts" / "4", "--iterations", "8", "--wsd-fract-decay", "0.5"],
        capsys,
    )
    assert rc == 0, err  # its default folder is inside its own run: allowed
    assert (out / "cooldown_8_linear_0.5" / "summary.json").is_file()


# ---------------------------------------------------------------- 10: no hang on a FIFO


def test_10_fifo_in_a_prepare_input_folder_is_skipped(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world\n" * 300)
    os.mkfifo(folder / "b.txt")
    signal.alarm(60)  # a hang fails the test instead of blocking the suite
    try:
        rc, err = _prepare([folder, "--out", tmp_path / "ds", "--workers", "1"], capsys)
    finally:
        signal.alarm(0)
    assert rc == 0, err


def test_10_fifo_as_prepare_input_file_is_refused(tmp_path, capsys):
    fifo = tmp_path / "b.txt"
    os.mkfifo(fifo)
    signal.alarm(60)
    try:
        rc, err = _prepare([fifo, "--out", tmp_path / "ds"], capsys)
    finally:
        signal.alarm(0)
    assert rc == 2 and "input not found" in _one_error(err)


# ------------------------------------------------------------ 16: bad records, one warning


def test_16_bad_rows_are_skipped_with_one_warning(tmp_path, capsys):
    out = tmp_path / "s"
    (out / "rows").mkdir(parents=True)
    lines = [
        {"config_id": "a", "status": "ok", "n_layer": 1, "written_at": 1.0},
        {"config_id": "b", "status": "ok", "n_layer": "two", "written_at": 2.0},
        {"config_id": "c", "status": "ok", "n_layer": 3, "written_at": "yesterday"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    text += '{"config_id": "d", "repeat": Infinity}\n{"config_id": "e", "repeat": NaN}\n\xff\xfe\n'
    (out / "rows" / "h-1.jsonl").write_bytes(text.encode("latin-1"))
    rc, shown, err = _bench(["show", out, "--sort", "n_layer"], capsys)
    assert rc == 0, err
    assert [x.split()[0] for x in shown.splitlines()[1:]] == ["a", "b"]
    warns = [x for x in err.splitlines() if x.startswith("warning: ")]
    assert len(warns) == 1 and "skipped 4 unreadable record(s)" in warns[0], err
    rc, shown, err = _bench(["show", out, "--sort", "-n_layer"], capsys)
    assert rc == 0 and [x.split()[0] for x in shown.splitlines()[1:]] == ["b", "a"]


def test_16_text_in_numeric_columns_is_drawn_as_missing(tmp_path, capsys):
    out = tmp_path / "s"
    (out / "rows").mkdir(parents=True)
    rows = [
        {"config_id": "a", "status": "ok", "step_ms_median": "abc", "params": "x",
         "tokens_per_s": "t", "val_loss": "q", "batch_size": 4, "written_at": 1.0},
        {"config_id": "b", "status": "ok", "step_ms_median": 2.0, "params": 100,
         "tokens_per_s": 5.0, "val_loss": 3.0, "batch_size": "z", "written_at": 2.0},
        {"config_id": "c", "status": "ok", "measured_at": "noon", "written_at": 3.0},
    ]  # fmt: skip
    (out / "rows" / "h-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, _, err = _bench(["plot", out], capsys)
    assert rc == 0, err
    assert "drawn as missing" in err and "measured_at 'noon' is not a time" in err


def test_16_bad_job_records_and_heartbeats_are_skipped(tmp_path, capsys):
    out = tmp_path / "s"
    results.append_row(str(out), {"config_id": "a", "status": "ok"})
    jobs = out / ".jobs"
    (jobs / "heartbeat").mkdir(parents=True)
    recs = [
        {"config_id": "a", "job_id": "1", "submitted": "abc"},
        {"config_id": "a", "submitted": 1.0},
        {"config_id": "a", "job_id": "2", "submitted": 2.0, "executor": "slurm"},
    ]
    (jobs / "submit-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "[[[\n")
    (jobs / "heartbeat" / "a.json").write_text("[1]")
    (jobs / "heartbeat" / "b.json").write_text('{"config_id": 5}')
    rc, shown, err = _bench(["status", out], capsys)
    assert rc == 0, err
    assert "a " in shown
    assert sum(x.startswith("warning: ") for x in err.splitlines()) == 2, err


def test_16_bad_metrics_records_are_skipped_by_plot(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    good = [{"kind": "train", "step": s, "loss": 3.0 - s / 10, "lr": 1e-3} for s in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in good).encode()
    text += b'{"kind": "train", "step": NaN, "loss": 1}\n{"step": Infinity}\n\x00\xff\x80\n'
    text += b'{"kind": "eval", "step": 3, "val_loss": Infinity}\n'
    (run / "metrics.jsonl").write_bytes(text)
    rc, err = _train(["--plot", run], capsys)
    assert rc == 0, err
    assert (run / "plot.png").is_file()
    warns = [x for x in err.splitlines() if x.startswith("warning: ")]
    assert len(warns) == 1 and "skipped 3 unreadable record(s)" in warns[0], err


# ----------------------------------------------------- 18, 19: exits that say what happened


@pytest.mark.parametrize("what", ["ctrl-c", "full-disk"])
def test_18_checkpoint_write_interrupted_or_disk_full(tmp_path, capsys, monkeypatch, what):
    import core.files as cf

    out = tmp_path / "run"
    args = [*T, "--iterations", "2", "--scheduler", "constant", "--out", out]

    def write(self, b):
        e = (
            KeyboardInterrupt()
            if what == "ctrl-c"
            else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        )
        self.error = self.error or e
        raise e

    monkeypatch.setattr(cf._Recording, "write", write)
    rc, err = _train(args, capsys)
    assert "inline_container" not in err
    if what == "ctrl-c":
        assert rc == 130 and err.strip().splitlines()[-1].startswith("interrupted"), err
    else:
        assert rc == 2 and "No space left on device" in _one_error(err)
    assert not list(out.rglob("*.tmp.*"))
    assert _steps(out) == [1, 2]  # the metrics written before the checkpoint are kept


def test_19_sample_on_cuda_without_cuda_blames_the_device(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert _train([*T, "--iterations", "2", "--out", out], capsys)[0] == 0
    rc, err = _train(["sample", out, "--device", "cuda", "--max-new-tokens", "2"], capsys)
    assert rc == 2
    line = _one_error(err)
    assert "CUDA is not available" in line and "corrupt" not in line


# ------------------------------------------------------ 20: sweep data checked once, up front


def test_20_bad_sweep_data_is_one_error_before_any_worker(tmp_path, capsys):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"abc")
    out = tmp_path / "o"
    argv = ["sweep", "--minutes", "0.01", "--preset", "tiny", "--n-layer", "1,2"]
    rc, _, err = _bench([*argv, "--data", odd, "--out", out], capsys)
    assert rc == 2 and "not a whole number of uint16 tokens" in _one_error(err)
    assert not list(out.glob(".work/*.spec.json")) and not (out / "rows").exists()
