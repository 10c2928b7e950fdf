"""Shared fixtures and the verbose allclose helper for the kernel tests.

Two modes, chosen before pytest starts:

* CPU (the default, `make test`): the Triton interpreter, TRITON_INTERPRET=1 set before triton is
  imported. Without it the ops would silently take the torch-reference path and the tests would
  compare the reference with itself, so we fail loudly instead of skipping.
* CUDA (`STEPTIME_TEST_DEVICE=cuda`, run by `python -m bench.gpu_report`): the compiled kernels on
  CUDA tensors; every tensor a test creates lands on the GPU (torch's default device). Tests that
  only make sense under the interpreter carry the `interpreter_only` mark and are skipped there.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA_MODE = os.environ.get("STEPTIME_TEST_DEVICE", "") == "cuda"
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if CUDA_MODE:
    if not torch.cuda.is_available() or _INTERPRETING:
        raise pytest.UsageError(
            "STEPTIME_TEST_DEVICE=cuda needs a CUDA device and TRITON_INTERPRET unset"
        )
    torch.set_default_device("cuda")
elif not _INTERPRETING:
    raise pytest.UsageError(
        "tests/kernels must run with TRITON_INTERPRET=1 set in the environment before pytest "
        "starts, e.g. `TRITON_INTERPRET=1 pytest tests/kernels` (the Makefile does this), or "
        "with STEPTIME_TEST_DEVICE=cuda on a GPU"
    )


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "interpreter_only: needs the CPU Triton interpreter")


def pytest_collection_modifyitems(config, items) -> None:
    if not CUDA_MODE:
        return
    skip = pytest.mark.skip(reason="checks interpreter-only behaviour (CPU grid estimate etc.)")
    for item in items:
        if "interpreter_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max-norm relative error ||a - e||_inf / max(||e||_inf, tiny), computed in float64."""
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    denom = max(e.abs().max().item(), 1e-30) if e.numel() else 1.0
    return (a - e).abs().max().item() / denom if e.numel() else 0.0


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """Assert rel_err <= tol; on failure print the worst index with both values."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = rel_err(actual, expected)
    if not err <= tol:  # also catches NaN
        diff = (actual.detach().double() - expected.detach().double()).abs()
        flat = int(torch.nan_to_num(diff, nan=float("inf")).argmax().item())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        raise AssertionError(
            f"{what}: rel err {err:.3e} > tol {tol:.3e}; worst at {idx}: "
            f"got {actual.detach().reshape(-1)[flat].item()!r}, "
            f"want {expected.detach().reshape(-1)[flat].item()!r}"
        )


def oracle_tol(torch_same_dtype: torch.Tensor, fp64: torch.Tensor) -> float:
    """Low-precision tolerance: 2x torch's own same-dtype error against float64, + 1e-3."""
    return 2.0 * rel_err(torch_same_dtype, fp64) + 1e-3


@pytest.fixture
def close():
    """The verbose assert as a fixture (test files cannot import conftest reliably by name)."""
    return assert_close_rel


@pytest.fixture
def lowp_tol():
    """The low-precision oracle tolerance as a fixture."""
    return oracle_tol
