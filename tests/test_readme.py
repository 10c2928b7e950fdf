"""Every shell block of README.md runs, in order, from an empty folder, and exits 0.

Slow tier (`make test-all`, CI): the blocks start dozens of processes. They form one chain on
purpose, and xdist keeps this file on one worker, in order (`--dist loadfile`):

Blocks run with `bash -euo pipefail` in one temporary folder (later blocks use what earlier ones
wrote, as a reader following the README would), with this checkout's venv first on PATH and
`STEPTIME_SMOKE=1`, which shrinks the H100 commands to CPU-smoke size (train/smoke.py). The first
block (`make demo` / `make test`) is this suite itself and is not run again. A block whose first
line is `# needs: cuda` runs only on a CUDA machine (the test says so when it skips); a
`# needs: slurm` block runs against a fake one-node Slurm (sbatch/srun/squeue scripts from
tests/bench/test_cluster.py) that executes submitit's real sbatch script here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def _fake_slurm(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "_cluster_tests", ROOT / "tests" / "bench" / "test_cluster.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bin_dir = folder / "fake-slurm-bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", mod.SBATCH), ("srun", mod.SRUN), ("squeue", mod.SQUEUE)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def test_readme_has_the_two_setup_commands_first():
    first = readme_blocks()[0]
    assert "make demo" in first and "make test" in first


@pytest.mark.parametrize("i", range(1, len(readme_blocks())), ids=lambda i: f"block{i}")
@pytest.mark.slow
def test_readme_block_runs(i: int, workdir: Path) -> None:
    block = readme_blocks()[i]
    env = dict(os.environ, STEPTIME_SMOKE="1", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    first = block.splitlines()[0].strip()
    if first == "# needs: cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("README block needs CUDA GPUs (--gpus / NCCL); none on this machine")
    if first == "# needs: slurm":
        bin_dir = _fake_slurm(workdir)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        env["FAKE_SLURM_DIR"] = str(workdir / "fake-slurm-state")
        block += "\nbench sweep " + _wait_args(block)  # let the detached jobs land before we leave
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (
        f"README block {i} failed ({r.returncode}):\n{block}\n{r.stderr[-3000:]}"
    )
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def _wait_args(block: str) -> str:
    """The block's `bench sweep ... --detach` command without --detach: it waits for the jobs."""
    cmd = " ".join(line.rstrip("\\").strip() for line in block.splitlines())
    sweep = cmd[cmd.index("bench sweep") + len("bench sweep") :]
    sweep = sweep.split("bench status")[0]
    return sweep.replace("--detach", "")
