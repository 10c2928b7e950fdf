"""tests/train setup: these tests run against the real `model.transformer.Transformer` and
`kernels.FusedAdamW` (on CPU without TRITON_INTERPRET, so the optimizer takes its torch
reference)."""


def pytest_report_header(config):
    return "tests/train: real model.transformer and kernels.FusedAdamW (CPU torch reference path)"
