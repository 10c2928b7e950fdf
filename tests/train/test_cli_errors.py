"""Bad input: one `error: ...` line on stderr and exit code 2, never a traceback."""

import subprocess
import sys

import pytest

from train.cli import main

BASE = [
    "--preset",
    "tiny",
    "--iterations",
    "3",
    "--warmup-steps",
    "1",
    "--batch-size",
    "2",
    "--acc-steps",
    "1",
    "--no-progress",
]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--data", "/nonexistent/tokens.bin"], "data file not found"),
        (["--n-embd", "66", "--n-head", "4"], "not divisible"),
        (["--scheduler", "wsd", "--wsd-fract-decay", "1.5"], "fract decay"),
        (["--scheduler", "wsd", "--decay-type", "exp"], "exp"),
        (["--weight-average", "--wa-interval", "7", "--wa-horizon", "20"], "divide"),
        (["--preset", "nope"], "unknown preset"),
        (["--kernels", "rmsnorm+gelu"], "unknown op 'gelu'"),
        (["--kernels", "cuda"], "kernels must be auto, torch, triton"),
        (["--print-schedule", "--scheduler", "wsd", "--wsd-fract-decay", "-0.1"], "fract decay"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, extra, needle):
    assert main(BASE + ["--out", str(tmp_path / "r")] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    for flag in ("--resume-from", "--cooldown-from"):
        assert main([flag, str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: corrupt or unreadable checkpoint") and "\n" not in err
    assert main(["--resume-from", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_subprocess_no_traceback(tmp_path):
    # the real entry path: a fresh interpreter, as a user runs it
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            *BASE,
            "--out",
            str(tmp_path / "r"),
            "--scheduler",
            "wsd",
            "--decay-type",
            "exp",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    h = subprocess.run(
        [sys.executable, "-m", "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert h.returncode == 0
    assert "--wsd-fract-decay" in h.stdout and "--cooldown-targets" in h.stdout
