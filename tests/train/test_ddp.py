"""DDP: 2 gloo processes (torchrun) follow the single-process loss curve at equal global batch."""

import json
import os
import subprocess
import sys

import pytest

ARGS = [
    "--preset",
    "tiny",
    "--scheduler",
    "wsd",
    "--iterations",
    "6",
    "--warmup-steps",
    "2",
    "--lr",
    "3e-3",
    "--acc-steps",
    "2",
    "--eval-batches",
    "2",
    "--eval-interval",
    "0",
    "--no-progress",
    "--device",
    "cpu",
]


def _losses(d):
    return [
        json.loads(ln)["loss"] for ln in open(os.path.join(d, "metrics.jsonl")) if '"train"' in ln
    ]


@pytest.mark.slow
def test_two_gloo_processes_match_single(tmp_path):
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    r1 = subprocess.run(
        [sys.executable, "-m", "train", *ARGS, "--batch-size", "8", "--out", single],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "train",
            *ARGS,
            "--batch-size",
            "4",
            "--out",
            ddp,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r2.returncode == 0, r2.stderr[-2000:]
    a, b = _losses(single), _losses(ddp)
    assert len(a) == len(b) == 6
    assert a[-1] < a[0]  # it trained
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * abs(x), (a, b)
    s = json.load(open(os.path.join(ddp, "summary.json")))
    assert s["world_size"] == 2 and s["tokens_per_step"] == 8 * 2 * 64
