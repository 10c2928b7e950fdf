"""Sweep wiring without measuring: launch commands, live jobs, exit lines, cores, flags, rows."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest

from bench.cli import main
from bench.sweep import executors, rowbuild
from bench.sweep import run as sweep
from bench.sweep import status as st
from bench.sweep.cli import parse_cores, report
from bench.sweep.grid import config_id, expand
from bench.sweep.options import SweepOptions
from bench.sweep.progress import Progress


def _rows(n_layers=("1", "2")) -> list[dict]:
    return expand({"n_layer": list(n_layers), "n_head": ["2"]}, "tiny")


def _spec(tmp_path, **extra) -> dict:
    row = _rows(["1"])[0]
    spec = sweep.make_spec(
        row, config_id(row), 0, SweepOptions(str(tmp_path), minutes_per_config=0.01)
    )
    return {**spec, **extra}


def test_one_process_per_node_on_several_nodes_still_runs_under_torchrun(tmp_path):
    spec = _spec(tmp_path, nproc_per_config=1)
    assert sweep.worker_command(spec, "s", "r")[1:3] == ["-m", "bench.worker.run"]
    multi = dict(spec, nnodes=2, node_rank=1, master_addr="n0", master_port=29511)
    cmd = sweep.worker_command(multi, "s", "r")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=1"], cmd
    assert "--nnodes=2" in cmd and "--node-rank=1" in cmd and "--master-addr=n0" in cmd
    assert "--standalone" not in cmd


def test_each_node_logs_into_its_own_file(tmp_path, monkeypatch):
    seen: list[str] = []

    def fake_spawn(cmd, log_path, env):
        seen.append(log_path)
        with open(log_path, "w") as fh:
            fh.write("rendezvous\n")

    monkeypatch.setattr(sweep.proc, "spawn", fake_spawn)
    monkeypatch.setattr(sweep.proc, "wait_or_kill", lambda child, timeout: 1)
    spec = _spec(tmp_path, nnodes=2, master_addr="n0", master_port=1)
    key = st.key_of(spec)
    assert sweep.run_config(dict(spec, node_rank=1), str(tmp_path)) == {}
    row = sweep.run_config(dict(spec, node_rank=0), str(tmp_path))
    work = tmp_path / ".work"
    assert seen == [str(work / f"{key}.node1.log"), str(work / f"{key}.log")]
    assert row["status"] == "error" and "rendezvous" in row["message"]


def test_a_local_sweep_leaves_configs_of_live_jobs_to_them(tmp_path, monkeypatch, capsys):
    rows = _rows()
    held, free = (config_id(r) for r in rows)
    st.write_heartbeat(str(tmp_path), held, 0, "77_0")  # a job measures it right now
    rec = {"config_id": held, "job_id": "77_0", "executor": "slurm", "submitted": 1.0}
    (tmp_path / ".jobs" / "submit-x.jsonl").write_text(json.dumps(rec) + "\n")
    todo: list[str] = []
    monkeypatch.setattr(sweep, "_run_local", lambda specs, o, log: todo.extend(specs) or [])
    out = sweep.run_sweep(
        rows, SweepOptions(str(tmp_path), minutes_per_config=0.01, progress=False)
    )
    assert [s["config_id"] for s in todo] == [free] and out["held"] == [held]
    assert "1 config(s) are running or queued as jobs" in capsys.readouterr().err


def test_report_never_prints_an_empty_reason(tmp_path, capsys):
    valid = [(r, config_id(r)) for r in _rows()]
    opts = SweepOptions(str(tmp_path), minutes_per_config=0.01)
    assert report([], valid, opts, held=[valid[0][1]]) == 0  # still running: not failed
    err = capsys.readouterr().err
    assert "still run by jobs" in err and "error" not in err
    assert report([], valid, opts) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no config of this grid has a row in") and "()" not in err
    bad = [{"config_id": cid, "status": "oom"} for _, cid in valid]
    assert report(bad, valid, opts) == 1
    assert "every config failed (2 oom)" in capsys.readouterr().err


def test_cpu_cores_parse_and_bad_cores_are_one_line(tmp_path, capsys):
    assert parse_cores("0") == (0,) and parse_cores("3,1-2,3") == (3, 1, 2)
    for text in ("", "a", "2-1", "1,", "-1", "0-99999"):
        with pytest.raises(ValueError, match="--cpu-cores takes core ids"):
            parse_cores(text)
    base = ["sweep", "--minutes", "0.01", "--preset", "tiny", "--n-head", "2"]
    cases = [
        (["--cpu-cores", "100000"], "--cpu-cores 100000: not a core this process may use"),
        (["--cpu-cores", "0", "--no-pin"], "--cpu-cores pins the workers, --no-pin says not"),
        (["--cpu-cores", "0", "--nproc-per-config", "2"], "--cpu-cores pins one-process"),
        (["--cpu-cores", "0", "--executor", "slurm"], "--cpu-cores needs --executor local"),
    ]
    for extra, msg in cases:
        assert main([*base, *extra, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    assert not (tmp_path / "o").exists()  # refused before the folder was made


def test_the_chosen_cores_reach_the_worker(tmp_path):
    opts = SweepOptions(str(tmp_path), minutes_per_config=0.01, cpu_cores=(0, 1))
    row = _rows(["1"])[0]
    assert sweep.make_spec(row, config_id(row), 0, opts)["cpu_cores"] == [0, 1]
    assert _spec(tmp_path)["cpu_cores"] is None  # chosen by the worker (bench.worker.runsetup)


def test_plot_colour_flags_reach_plot_dir(tmp_path, monkeypatch, capsys):
    from bench.sweep import plot

    got = {}
    monkeypatch.setattr(
        plot, "plot_dir", lambda d, out, **kw: got.update(kw, d=d, out=out) or ["x.png"]
    )
    assert main(["plot", str(tmp_path), "--color-by", "n_layer", "--loss-color-by", "lr"]) == 0
    assert got == {"d": str(tmp_path), "out": None, "color_by": "n_layer", "loss_color_by": "lr"}
    assert capsys.readouterr().out == "x.png\n"


def test_static_columns_of_a_cpu_row_use_float32(tmp_path, monkeypatch):
    from model import costs

    seen = {}

    def fake(cfg, batch_size, **kw):
        seen.update(kw)
        return {"flops": 1.0, "bytes": 2.0}

    monkeypatch.setattr(costs, "step_features", fake)
    spec = _spec(tmp_path)
    spec["row"] = {**spec["row"], "device": "cpu", "dtype": "bfloat16"}
    row = rowbuild.finish_row(spec, {"status": "error", "message": "crashed before reporting"})
    assert row["dtype"] == "float32" and row["dtype_requested"] == "bfloat16"
    assert seen["dtype"] == "float32"


@pytest.mark.parametrize(
    "executor,devices,gpu_here,want",
    [
        ("slurm", ["auto"], False, True),  # a cluster's nodes have the GPUs, not this machine
        ("slurm", ["cpu"], True, False),
        ("slurm", ["cpu", "cuda"], False, True),
        ("submitit-local", ["auto"], False, False),  # runs here: auto is what this machine has
        ("submitit-local", ["auto"], True, True),
    ],
)
def test_gpus_are_requested_for_auto_on_slurm(executor, devices, gpu_here, want, monkeypatch):
    monkeypatch.setattr(executors, "_gpu_here", lambda: gpu_here)
    specs = [{"row": {"device": d}, "nproc_per_config": 4} for d in devices]
    opts = executors.ExecutorOptions(executor=executor, nodes=2)
    assert executors._resources(specs, opts) == (2, want)


@pytest.mark.parametrize("tty,progress,bar", [(False, True, False), (True, False, False)])
def test_waiting_shows_a_bar_only_on_a_terminal(tty, progress, bar, monkeypatch):
    fake = io.StringIO()
    fake.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", fake)
    b = Progress(2, progress)
    b.done("[     ok] a")
    b.close()
    assert (b.tqdm is not None) == bar and fake.getvalue() == "[     ok] a\n"


def test_waiting_on_a_terminal_draws_a_bar(monkeypatch):
    fake = io.StringIO()
    fake.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", fake)
    b = Progress(2)
    b.done("[     ok] a")
    b.close()
    assert b.tqdm is not None and "[     ok] a" in fake.getvalue() and "1/2" in fake.getvalue()


def test_a_failed_worker_reports_what_it_would_have_run(tmp_path):
    """A crashed run's row still says what ran here (a CPU step: float32, torch kernels)."""
    import subprocess

    spec = _spec(tmp_path)
    spec["row"] = {**spec["row"], "inject": "error", "dtype": "bfloat16"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "bench.worker.run", str(tmp_path / "spec.json"), "res.json"]
    subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=120, check=True)
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["status"] == "error"
    assert (res["device"], res["kernels"], res["dtype"]) == ("cpu", "torch", "float32")


def test_a_sweep_on_a_terminal_keeps_its_lines_on_stderr(tmp_path, monkeypatch, capsys):
    fake = io.StringIO()
    fake.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", fake)
    spec = _spec(tmp_path)
    row = {**spec["row"], "config_id": spec["config_id"], "status": "ok"}
    monkeypatch.setattr(sweep, "run_config", lambda s, out: row)
    opts = SweepOptions(str(tmp_path), minutes_per_config=0.01)
    assert sweep._run_local([spec], opts, print) == [row]
    assert capsys.readouterr().out == ""  # stdout stays for tables
    assert f"[     ok] {spec['config_id']}" in fake.getvalue() and "1/1" in fake.getvalue()
