"""Property: whatever a folder steptime made holds, its commands end cleanly (issue 23).

Every file of a train run, a prepared dataset and a sweep folder (dot files included) is in turn
replaced by random garbage, cut short, turned into a nesting bomb or into a symlink to a file or
folder outside (a sub-folder: into a symlink, or a file); then every command that reads or writes
that kind of folder runs on it. Each must return 0 or 2 (1 where "every config failed" is a valid
answer), never raise (a traceback), print exactly one `error:` line when it fails, and write
nothing outside the folders it was given: the symlink targets are compared byte for byte before
and after, and nothing new appears beside the folder.

`test_garbage_fast` runs a few seeded cases per folder kind in the fast tier; the slow variant
runs many more, and two slow tests put values of any type into the fields of well-formed records
(a real checkpoint's payload, sweep rows). Sweeps run with the worker replaced by a stub that
writes an ok row, so no process is started.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
T = ["--preset", "tiny", "--n-layer", "1", "--batch-size", "2", "--acc-steps", "1"]
T += ["--warmup-steps", "0", "--eval-batches", "1", "--no-progress", "--scheduler", "constant"]
SWEEP = ["sweep", "--minutes", "0.01", "--preset", "tiny", "--n-head", "2", "--batch-size", "4"]
SWEEP += ["--n-layer", "1,2", "--no-progress"]
MUTATIONS = ("garbage", "truncate", "bomb", "link_file", "link_dir", "empty")
DIR_MUTATIONS = ("link_dir", "link_dir", "garbage", "link_file")  # a folder: a link, or a file


# ------------------------------------------------------------------------------ the folders


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """{kind: folder} of one train run, one prepared dataset and one sweep folder."""
    from bench.sweep import results, status
    from bench.sweep.options import check_folder_settings, measurement_settings
    from train.cli import main as train_main

    base = tmp_path_factory.mktemp("pristine")
    text = base / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    data = base / "data"
    assert train_main(["prepare", str(text), "--out", str(data), "--val-fraction", "0.2"]) == 0
    run = base / "run"
    argv = [
        *T,
        "--iterations",
        "4",
        "--permanent-ckpt-interval",
        "2",
        "--latest-ckpt-interval",
        "2",
    ]
    assert train_main([*argv, "--data", str(data), "--out", str(run)]) == 0
    sweep = base / "sweep"
    opts = _sweep_opts(sweep)
    check_folder_settings(str(sweep), measurement_settings(opts))
    for row, cid in _grid(opts):
        results.append_row(
            str(sweep), {**row, "config_id": cid, "status": "ok", "step_ms_median": 1.0}
        )
    (sweep / ".work").mkdir()
    (sweep / ".work" / "x.log").write_text("worker log\n")
    jobs = sweep / ".jobs"
    (jobs / "heartbeat").mkdir(parents=True)
    rec = {"config_id": "x", "job_id": "1", "executor": "slurm", "submitted": 1.0}
    (jobs / "submit-1.jsonl").write_text(json.dumps(rec) + "\n")
    status.write_heartbeat(str(sweep), "x", 0, "1", ended=2.0, status="ok")
    return {"run": run, "data": data, "sweep": sweep, "text": text}


def _grid_args():
    from bench.cli import build_parser

    return build_parser().parse_args([*SWEEP, "--out", "x"])


def _grid(opts):
    from bench.sweep.cli import grid_rows
    from bench.sweep.run import prepare

    return prepare(grid_rows(_grid_args()), opts)[0]


def _sweep_opts(out: Path):
    from bench.sweep.cli import options

    a = _grid_args()
    a.out = str(out)
    return options(a)


# ----------------------------------------------------------------------------- the commands


def _commands(kind: str, folder: Path, scratch: Path, pristine: dict) -> list[tuple[str, list]]:
    """(cli, argv) of every command that reads or writes a folder of `kind`."""
    f = str(folder)
    if kind == "run":
        more = [*T, "--iterations", "6"]
        return [
            ("train", ["--plot", f]),
            ("train", ["sample", f, "--max-new-tokens", "2", "--device", "cpu"]),
            ("train", ["--resume-from", f, "--iterations", "6"]),
            ("train", [*more, "--auto-resume", "--out", f]),
            (
                "train",
                [
                    "--cooldown-from",
                    f"{f}/ckpts/2",
                    "--iterations",
                    "4",
                    "--wsd-fract-decay",
                    "0.5",
                ],
            ),
        ]
    if kind == "data":
        return [
            ("train", [*T, "--iterations", "2", "--data", f, "--out", str(scratch / "o")]),
            (
                "train",
                ["prepare", str(pristine["text"]), "--out", f, "--overwrite", "--workers", "1"],
            ),
            ("bench", [*SWEEP, "--data", f, "--out", str(scratch / "s")]),
        ]
    return [
        ("bench", ["show", f, "--sort", "n_layer"]),
        ("bench", ["status", f]),
        ("bench", ["merge", f, "--out", str(scratch / "m")]),
        ("bench", [*SWEEP, "--out", f]),
        ("bench", ["plot", f]),
    ]


def _main(cli: str):
    if cli == "train":
        from train.cli import main
    else:
        from bench.cli import main
    return main


# ----------------------------------------------------------------------------- the mutations


def _mutate(path: Path, how: str, rng: random.Random, outside: Path) -> None:
    """Replace the file `path` per `how`; links point into `outside` (the write-outside trap)."""
    data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if how == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    elif how == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))] if data else b"")
    elif how == "bomb":
        path.write_bytes(rng.choice([b"[" * 100_000, b'{"a":' * 50_000, b"[" * 100_000 + b"\n"]))
    elif how == "link_file":
        path.symlink_to(outside / "victim.txt")
    elif how == "link_dir":
        path.symlink_to(outside / "victim_dir")
    else:
        path.write_bytes(b"")


def _files(folder: Path) -> list[Path]:
    """Every file and sub-folder of `folder` (dot files included), sorted."""
    return sorted(p for p in folder.rglob("*") if not p.is_symlink())


def _trap(outside: Path) -> dict:
    outside.mkdir(exist_ok=True)
    (outside / "victim.txt").write_text("do not touch\n")
    (outside / "victim_dir").mkdir(exist_ok=True)
    (outside / "victim_dir" / "keep.txt").write_text("do not touch either\n")
    return _snapshot(outside)


def _snapshot(folder: Path) -> dict:
    out = {}
    for dirpath, dirnames, files in os.walk(folder):
        for name in files + dirnames:
            p = Path(dirpath) / name
            out[str(p)] = p.read_bytes() if p.is_file() and not p.is_symlink() else "dir"
    return out


def _release_locks() -> None:
    """Close ownership locks a command left with this process (a CLI process would exit)."""
    from core import owner

    for key in list(owner._HELD):
        os.close(owner._HELD.pop(key)[0])


# ----------------------------------------------------------------------------- the property


def _run_case(kind, pristine, tmp: Path, rng: random.Random, capsys, monkeypatch) -> None:
    from bench.sweep import results, run

    def stub_measure(spec, out_dir):  # no worker processes: an ok row, as a worker would
        target = os.path.join(os.path.abspath(out_dir), spec.get("subdir") or "")
        row = {**spec["row"], "config_id": spec["config_id"], "repeat": spec["repeat"]}
        return results.append_row(target, {**row, "status": "ok", "step_ms_median": 1.0})

    monkeypatch.setattr(run, "_measure", stub_measure)
    folder = tmp / kind
    shutil.copytree(pristine[kind], folder, symlinks=True)
    outside = tmp / "outside"
    before = _trap(outside)
    files = _files(folder)
    picked = rng.sample(files, k=min(len(files), rng.choice([1, 1, 2, 3])))
    picked = [p for p in picked if not any(q in p.parents for q in picked)]  # none inside another
    hows = [rng.choice(DIR_MUTATIONS if p.is_dir() else MUTATIONS) for p in picked]
    for path, how in zip(picked, hows):
        _mutate(path, how, rng, outside)
    what = ", ".join(f"{p.relative_to(folder)}={h}" for p, h in zip(picked, hows))
    scratch = tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    for cli, argv in _commands(kind, folder, scratch, pristine):
        capsys.readouterr()
        try:
            rc = _main(cli)([str(a) for a in argv])
        except BaseException as e:  # a traceback: the property fails, naming the case
            pytest.fail(f"{cli} {argv[:2]} on {kind} with {what}: raised {type(e).__name__}: {e}")
        finally:
            _release_locks()
        err = capsys.readouterr().err
        case = f"{cli} {' '.join(map(str, argv[:3]))} on {kind} with {what}"
        assert "Traceback" not in err, f"{case}\n{err}"
        if os.environ.get("STEPTIME_PROPERTY_VERBOSE"):
            print(f"{rc} {case} | {err.strip().splitlines()[-1:]}", file=sys.__stderr__)
        allowed = (0, 1, 2) if argv[0] == "sweep" else (0, 2)
        assert rc in allowed, f"{case}: exit {rc}\n{err}"
        if rc == 2:
            errors = [x for x in err.splitlines() if x.startswith("error: ")]
            assert len(errors) == 1, f"{case}\n{err}"
        assert _snapshot(outside) == before, f"{case}: wrote outside its folder"
        left = [p for p in tmp.iterdir() if p.name not in (kind, "outside", "scratch")]
        assert not left, f"{case}: wrote {left}"


KINDS = ("run", "data", "sweep")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_garbage_fast(kind, seed, pristine, tmp_path, capsys, monkeypatch):
    _run_case(kind, pristine, tmp_path, random.Random(f"{kind}-{seed}"), capsys, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3, 63))
def test_garbage_slow(kind, seed, pristine, tmp_path, capsys, monkeypatch):
    _run_case(kind, pristine, tmp_path, random.Random(f"{kind}-{seed}"), capsys, monkeypatch)


# ------------------------------------------------- typed garbage inside well-formed records

VALUES = [None, 1, -1, 10**30, 1.5, float("nan"), float("inf"), "x", "", [], {}, [1, 2], True]


def _leaves(d, pre=()):
    """Paths of every value in a nested dict/list (tensors are leaves)."""
    import torch

    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else []
    for k, v in items:
        yield (*pre, k)
        if not torch.is_tensor(v) and (not isinstance(v, list) or len(v) < 20):
            yield from _leaves(v, (*pre, k))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_checkpoint_fields_of_any_type(seed, pristine, tmp_path, capsys):
    """One field of a real checkpoint gets a value of another type or size: resuming and
    sampling from it end with 0 or one error line, never a traceback."""
    import torch

    from train.checkpoint import run_dir_of

    rng = random.Random(seed)
    payload = torch.load(pristine["run"] / "latest" / "ckpt.pt", weights_only=True)
    path = rng.choice(list(_leaves(payload)))
    cur = payload
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = rng.choice(VALUES)
    ckpt = tmp_path / "c.pt"
    torch.save(payload, ckpt)
    assert run_dir_of(str(ckpt)) == str(tmp_path)
    for argv in (["--resume-from", ckpt, "--iterations", "6", "--out", tmp_path / "o"],
                 ["sample", ckpt, "--max-new-tokens", "2", "--device", "cpu"]):  # fmt: skip
        capsys.readouterr()
        rc = _main("train")([str(a) for a in argv])
        _release_locks()
        err = capsys.readouterr().err
        assert rc in (0, 2) and "Traceback" not in err, (path, err)
        assert rc == 0 or len([x for x in err.splitlines() if x.startswith("error: ")]) == 1


ROW = {"config_id": "a", "repeat": 0, "status": "ok", "n_layer": 1, "n_embd": 64, "n_head": 2,
       "batch_size": 4, "acc_steps": 1, "sequence_length": 64, "params": 1000,
       "step_ms_median": 2.0, "tokens_per_s": 100.0, "mfu": None, "val_loss": 3.0,
       "message": "", "kind": "config", "loss_curve": [[0.1, 3.0], [0.2, 2.9]],
       "written_at": 1.0, "measured_at": 1.0}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_row_fields_of_any_type(seed, tmp_path, capsys):
    """Rows whose fields hold values of any type: show (sorted, filtered), status, plot and
    merge end with 0 or one error line, never a traceback."""
    rng = random.Random(seed)
    out = tmp_path / "s"
    (out / "rows").mkdir(parents=True)
    rows = []
    for j in range(3):
        r = dict(ROW, config_id=f"c{j}")
        for _ in range(rng.randint(1, 4)):
            r[rng.choice(list(ROW))] = rng.choice(VALUES)
        rows.append(r)
    (out / "rows" / "h-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    commands = [
        ["show", out, "--sort", rng.choice(list(ROW))],
        ["show", out, "--filter", "status == ok and n_layer >= 1"],
        ["status", out],
        ["plot", out],
        ["merge", out, "--out", tmp_path / "m"],
    ]
    for argv in commands:
        capsys.readouterr()
        rc = _main("bench")([str(a) for a in argv])
        err = capsys.readouterr().err
        assert rc in (0, 2) and "Traceback" not in err, (rows, err)
        assert rc == 0 or len([x for x in err.splitlines() if x.startswith("error: ")]) == 1
