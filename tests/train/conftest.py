"""tests/train setup: these tests run against the real `model.transformer.Transformer` and
`kernels.FusedAdamW` (on CPU without TRITON_INTERPRET, so the optimizer takes its torch
reference).

The tiny models run on one torch thread: as fast as two on an idle machine, and several times
faster when the CI machine's two cores are shared (OpenMP threads spin-waiting for a busy core)."""

import pytest
import torch


def pytest_report_header(config):
    return "tests/train: real model.transformer and kernels.FusedAdamW (CPU torch reference path)"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Module scope: set before the modules' own (module-scoped) training fixtures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
