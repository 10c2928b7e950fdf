"""STEPTIME_SMOKE=1 shrinks GPU-scale settings and leaves CPU-scale ones alone; off by default."""

from __future__ import annotations

from train import smoke


def test_smoke_caps_only_when_enabled(monkeypatch):
    monkeypatch.delenv("STEPTIME_SMOKE", raising=False)
    assert smoke.scale_val_tokens(16384) == 16384 and smoke.scale_minutes(5.0) == 5.0
    monkeypatch.setenv("STEPTIME_SMOKE", "1")
    assert smoke.scale_val_tokens(16384) == smoke.SMOKE_VAL_TOKENS
    assert smoke.scale_val_tokens(100) == 100  # already small: kept
    assert smoke.scale_minutes(5.0) == smoke.SMOKE_MINUTES and smoke.scale_minutes(0.5) == 0.5
    grid = smoke.scale_grid({"n_layer": ["6", "12"], "n_embd": ["768"]})
    assert grid["n_layer"] == ["2"] and grid["n_embd"] == ["64"] and grid["n_head"] == ["2"]


def test_smoke_sweeps_build_on_the_tiny_preset(monkeypatch):
    monkeypatch.delenv("STEPTIME_SMOKE", raising=False)
    assert smoke.scale_preset("124M") == "124M" and smoke.scale_preset(None) is None
    monkeypatch.setenv("STEPTIME_SMOKE", "1")
    assert smoke.scale_preset("124M") == "tiny" and smoke.scale_preset("tiny") == "tiny"
    assert smoke.scale_preset(None) is None  # no preset: ModelConfig's defaults, capped by flags
