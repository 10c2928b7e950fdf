"""Sweeps beyond one process: submitit executors, `bench status`, reruns, and DDP configs (CPU).

The Slurm path runs for real against a fake one-node cluster: `sbatch`, `srun` and `squeue`
scripts on PATH that start each array task of submitit's sbatch script in the background with
the SLURM_* variables a cluster sets, so submitit's own script, job environment and logs are the
ones a cluster would use.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.sweep import results
from bench.sweep import status as st

pytest.importorskip("submitit", reason="the executor tests need submitit (pip install '.[test]')")

ROOT = Path(__file__).resolve().parents[2]
TINY = {"n_head": 2, "n_kv_head": 2, "batch_size": 4}  # on top of --preset tiny
BASE = ["--minutes", "0.005", "--untimed-steps", "1", "--no-progress", "--preset", "tiny"]
POLL = ["--poll-interval", "0.3"]  # how often a waiting sweep looks at its jobs
SUBMITIT_LOCAL = ["--executor", "submitit-local", *POLL]
FAST = [*BASE, "--n-head", "2", "--n-kv-head", "2", "--batch-size", "4"]  # 0.3 s budgets


def _sweep(out, *extra) -> int:
    return main(["sweep", *FAST, "--out", str(out), *extra])


def _ok(rows: list[dict]) -> dict[str, dict]:
    return {r["config_id"]: r for r in rows if r["status"] == "ok"}


def _records(out) -> list[dict]:
    recs = []
    for path in sorted((Path(out) / ".jobs").glob("submit-*.jsonl")):
        recs += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return recs


def _wait_for(pred, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_submitit_local_gives_the_rows_of_local(tmp_path):
    grid = ["--n-layer", "1,2", "--n-embd", "32,64"]
    # The jobs run while the local sweep measures the same grid; the second call waits for them.
    assert _sweep(tmp_path / "sub", *grid, *SUBMITIT_LOCAL, "--detach") == 0
    assert _sweep(tmp_path / "local", *grid) == 0
    assert _sweep(tmp_path / "sub", *grid, *SUBMITIT_LOCAL) == 0
    local, sub = (
        results.load_rows(str(tmp_path / "local")),
        results.load_rows(str(tmp_path / "sub")),
    )
    assert len(_ok(local)) == 4 and set(_ok(local)) == set(_ok(sub)), (local, sub)
    assert results.columns_of(local) == results.columns_of(sub)
    recs = _records(tmp_path / "sub")
    assert sorted(r["config_id"] for r in recs) == sorted(_ok(local))
    assert len({r["job_id"] for r in recs}) == 4 and {r["executor"] for r in recs} == {
        "submitit-local"
    }
    states = st.config_states(str(tmp_path / "sub"))
    assert [s.state for s in states] == ["done"] * 4 and all(s.job_id for s in states)
    # the jobs ran side by side, unpinned, and the folder says so
    settings = json.loads((tmp_path / "sub" / "sweep.json").read_text())["settings"]
    assert settings["pin"] is False and {r["pin"] for r in sub} == {False}
    assert json.loads((tmp_path / "local" / "sweep.json").read_text())["settings"]["pin"] is True


@pytest.mark.slow
def test_killing_the_submitter_loses_nothing(tmp_path, capsys):
    out = tmp_path / "s"
    grid = ["--n-layer", "1", "--n-embd", "32,64", *SUBMITIT_LOCAL]
    cmd = [sys.executable, "-m", "bench", "sweep", *FAST, "--out", str(out), *grid]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        recs = _wait_for(lambda: len(_records(out)) == 2 and _records(out), 60, "submission")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # At once: both jobs are alive, so the rerun submits nothing and waits for their rows.
    assert _sweep(out, *grid) == 0
    err = capsys.readouterr().err
    assert "2 config(s) already running or queued" in err and "\nsubmitted" not in err, err
    rows = results.load_rows(str(out))
    assert len(_ok(rows)) == 2 and _records(out) == recs
    assert _sweep(out, *grid) == 0
    assert "nothing to submit" in capsys.readouterr().err and _records(out) == recs

    def controllers_gone() -> bool:  # no orphans: each job's controller exits after its row
        return not any(b"submitit" in _cmdline(int(r["job_id"])) for r in recs)

    _wait_for(controllers_gone, 30, "the submitit-local controllers to exit")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
    except OSError:
        return b""


# --- a fake one-node Slurm cluster --------------------------------------------------------------

SBATCH = r"""
import os, re, socket, subprocess, sys
state = os.environ["FAKE_SLURM_DIR"]
os.makedirs(state, exist_ok=True)
script = sys.argv[-1]
m = re.search(r"^#SBATCH --array=(\d+)-(\d+)", open(script).read(), re.M)
counter = os.path.join(state, "next_id")
job = int(open(counter).read()) if os.path.exists(counter) else 4242
open(counter, "w").write(str(job + 1))
for t in range(int(m.group(1)), int(m.group(2)) + 1) if m else [None]:
    env = dict(os.environ, SLURM_JOB_ID=str(job * 1000 + t if t is not None else job),
               SLURM_NTASKS="1", SLURM_PROCID="0",
               SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1",
               SLURM_JOB_NODELIST=socket.gethostname())
    jid = str(job)
    if t is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(t))
        jid = f"{job}_{t}"
    if not os.environ.get("FAKE_SLURM_DRY"):
        p = subprocess.Popen(["bash", script], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        open(os.path.join(state, jid + ".pid"), "w").write(str(p.pid))
print(f"Submitted batch job {job}")
"""

SRUN = r"""
import os, subprocess, sys
args, out, err = sys.argv[1:], None, None
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        path = args.pop(0)
        for k, v in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"),
                     ("%j", "SLURM_JOB_ID"), ("%t", "SLURM_PROCID")):
            path = path.replace(k, os.environ.get(v, ""))
        out, err = (path, err) if flag == "--output" else (out, path)
with open(out, "a") as fo, open(err or out, "a") as fe:
    sys.exit(subprocess.call(args, stdout=fo, stderr=fe))
"""

SQUEUE = r"""
import glob, os
for path in glob.glob(os.path.join(os.environ["FAKE_SLURM_DIR"], "*.pid")):
    try:
        os.kill(int(open(path).read()), 0)
    except OSError:
        continue
    print(os.path.basename(path)[:-4])
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "fake-slurm-bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("squeue", SQUEUE)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path / "fake-slurm-state"))
    return bin_dir


@pytest.mark.slow
def test_slurm_array_failed_config_is_shown_and_retried(tmp_path, fake_slurm, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps([{"n_layer": 1, **TINY}, {"n_layer": 1, "inject": "error", **TINY}]))
    out = tmp_path / "s"
    args = ["--grid", str(grid), "--executor", "slurm", "--slurm-partition", "debug", *POLL]
    main(["sweep", *BASE, "--out", str(out), *args, "--slurm-setup", "export STEPTIME_FAKE=1"])
    capsys.readouterr()
    script = (out / ".jobs" / "submitit" / "4242_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --partition=debug" in script
    assert "export STEPTIME_FAKE=1" in script and "srun" in script
    rows = {r.get("inject"): r for r in results.load_rows(str(out))}
    assert rows[None]["status"] == "ok" and rows["error"]["status"] == "error", rows
    bad = rows["error"]["config_id"]

    assert main(["status", str(out)]) == 0
    shown = capsys.readouterr().out
    line = next(x for x in shown.splitlines() if x.startswith(bad))
    assert " failed " in line and "4242_1" in line and "injected error" in line, shown
    assert f"--- {bad}: last lines of" in shown and "1 done" in shown and "1 failed" in shown

    before = _records(out)
    main(["sweep", *BASE, "--out", str(out), *args])  # the rerun retries only the failed config
    new = _records(out)[len(before) :]
    assert [(r["config_id"], r["job_id"]) for r in new] == [(bad, "4243")], new  # not an array


def test_lost_jobs_are_failed_and_live_ones_are_held(tmp_path):
    out = tmp_path / "s"
    st.write_heartbeat(str(out), "aaaaaaaaaaaa", 0, "11_0")  # running: fresh heartbeat
    st.write_heartbeat(str(out), "bbbbbbbbbbbb", 0, "11_1")  # lost: heartbeat went stale
    stale = time.time() - 2 * st.STALE_S
    os.utime(st.heartbeat_path(str(out), "bbbbbbbbbbbb"), (stale, stale))
    recs = [
        {"config_id": c, "job_id": j, "executor": "submitit-local", "host": "elsewhere"}
        for c, j in (("aaaaaaaaaaaa", "11_0"), ("bbbbbbbbbbbb", "11_1"), ("cccccccccccc", "11_2"))
    ]
    dead = {"config_id": "dddddddddddd", "job_id": "999999999", "executor": "submitit-local"}
    recs.append({**dead, "host": os.uname().nodename})  # its controller pid does not exist
    (out / ".jobs" / "submit-x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    got = {s.key: (s.state, s.message) for s in st.config_states(str(out))}
    assert got["aaaaaaaaaaaa"][0] == "running"
    assert got["bbbbbbbbbbbb"][0] == "failed" and "stopped beating" in got["bbbbbbbbbbbb"][1]
    assert got["cccccccccccc"][0] == "pending"  # another host's job: cannot tell, so held
    assert got["dddddddddddd"][0] == "failed" and "ended before" in got["dddddddddddd"][1]
    assert st.live_keys(str(out)) == {"aaaaaaaaaaaa", "cccccccccccc"}


def test_slurm_errors_are_one_line(tmp_path, fake_slurm, monkeypatch, capsys):
    args = ["--n-layer", "1", "--executor", "slurm"]
    (fake_slurm / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n"
    )
    assert _sweep(tmp_path / "r", *args, "--slurm-partition", "nope") == 2
    err = capsys.readouterr().err
    assert err == "error: sbatch refused the jobs: invalid partition specified: nope\n", err
    assert _sweep(tmp_path / "l", "--n-layer", "1", "--slurm-partition", "gpu") == 2
    assert capsys.readouterr().err == "error: --slurm-partition needs --executor slurm\n"

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    assert _sweep(tmp_path / "a", *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs Slurm's sbatch and srun on PATH" in err, err
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    assert _sweep(tmp_path / "b", *args) == 2
    err = capsys.readouterr().err
    assert err == "error: --executor slurm needs submitit: pip install 'steptime[slurm]'\n", err
    assert not any((tmp_path / d).exists() for d in "lab")  # refused before touching --out


@pytest.mark.slow
def test_two_process_gloo_config_counts_both_ranks(tmp_path):
    out = tmp_path / "ddp"
    assert _sweep(out, "--n-layer", "1", "--nproc-per-config", "2") == 0
    (row,) = results.load_rows(str(out))
    assert row["status"] == "ok" and row["world_size"] == 2, row
    assert row["global_batch"] == 2 * 4 * row["acc_steps"]
    tokens = row["global_batch"] * row["sequence_length"]
    assert row["tokens_per_s"] == pytest.approx(tokens / (row["step_ms_median"] / 1e3), rel=1e-6)
