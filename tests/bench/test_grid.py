"""Grid expansion, value parsing, validation, config_id stability and shard coverage."""

from __future__ import annotations

import pytest

from bench.sweep import grid
from core import UserError


def test_expand_is_cartesian_over_a_preset():
    rows = grid.expand({"n_layer": ["1", "2"], "n_embd": ["32", "64"], "batch_size": ["4"]}, "tiny")
    assert len(rows) == 4
    assert {(r["n_layer"], r["n_embd"]) for r in rows} == {(1, 32), (1, 64), (2, 32), (2, 64)}
    assert all(r["vocab_size"] == 256 and r["batch_size"] == 4 for r in rows)
    assert all(isinstance(r["n_layer"], int) for r in rows)


@pytest.mark.parametrize(
    "lists,msg",
    [
        ({"n_layer": ["four"]}, "n_layer: cannot read 'four' as int"),
        ({"lr": ["fast"]}, "lr: cannot read"),
        ({"tie_embeddings": ["maybe"]}, "tie_embeddings"),
        ({"depth": ["2"]}, "unknown grid key 'depth'"),
    ],
    ids=["int", "float", "bool", "unknown-key"],
)
def test_bad_values_raise_one_line(lists, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(")):
        grid.expand(lists, "tiny")


def test_validate_reasons():
    ok = grid.expand({}, "tiny")[0]
    assert grid.validate(ok) is None
    assert "divisible" in grid.validate({**ok, "n_embd": 30})
    assert "dtype" in grid.validate({**ok, "dtype": "int8"})
    assert "batch-size" in grid.validate({**ok, "batch_size": 0})


def test_config_id_is_stable_and_distinguishes_settings():
    a = grid.expand({"batch_size": ["4", "8"]}, "tiny")
    assert grid.config_id(a[0]) == grid.config_id(dict(reversed(list(a[0].items()))))
    assert grid.config_id(a[0]) != grid.config_id(a[1])
    assert len(grid.config_id(a[0])) == 12


def test_shards_cover_the_grid_exactly_once():
    rows = grid.expand(
        {"n_layer": ["1", "2", "3"], "n_embd": ["32", "64"], "batch_size": ["1", "2", "4"]}, "tiny"
    )
    ids = [grid.config_id(r) for r in rows]
    n = 4
    parts = [[c for c in ids if grid.in_shard(c, (i, n))] for i in range(n)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert sum(len(p) for p in parts) == len(ids) == 18
    assert sum(1 for p in parts if p) >= 2  # the hash actually spreads the work


@pytest.mark.parametrize("text", ["2", "2/2", "-1/3", "a/b"])
def test_bad_shard(text):
    with pytest.raises(UserError):
        grid.parse_shard(text)


def test_grid_file_json_and_csv(tmp_path):
    j = tmp_path / "g.json"
    j.write_text('[{"n_layer": 1, "n_embd": 32}, {"n_layer": 2, "inject": "error"}]')
    rows = grid.read_grid_file(str(j), "tiny")
    assert [r["n_layer"] for r in rows] == [1, 2] and rows[1]["inject"] == "error"
    c = tmp_path / "g.csv"
    c.write_text("n_layer,batch_size,n_kv_head\n1,4,\n3,8,2\n")
    rows = grid.read_grid_file(str(c), "tiny")
    assert [(r["n_layer"], r["batch_size"], r["n_kv_head"]) for r in rows] == [
        (1, 4, None),
        (3, 8, 2),
    ]
    bad = tmp_path / "b.json"
    bad.write_text('{"n_layer": 1}')
    with pytest.raises(UserError, match="JSON list"):
        grid.read_grid_file(str(bad))


def test_value_types_come_from_the_dataclasses():
    """No hand copy: every ModelConfig field is a grid key with its own type (arch/bias/dropout)."""
    import dataclasses

    from model.config import ModelConfig

    assert set(grid.known_keys()) >= {f.name for f in dataclasses.fields(ModelConfig)}
    assert grid.parse_value("bias", "1") is True
    assert grid.parse_value("dropout", "0.1") == 0.1
    assert grid.parse_value("arch", "gpt2") == "gpt2"
    assert grid.parse_value("ffn_hidden", "none") is None
    assert grid.parse_value("lr", "3e-4") == 3e-4 and grid.parse_value("compile", "1") is True
    with pytest.raises(UserError, match="n_layer: a value is required"):
        grid.parse_value("n_layer", "")


def test_sweep_defaults_are_auto():
    row = grid.base_row("tiny")
    assert row["kernels"] == "auto" and row["device"] == "auto" and grid.validate(row) is None


def test_max_configs_is_checked_before_expanding():
    import time

    huge = {k: [str(i) for i in range(1, 1001)] for k in ("n_layer", "n_embd", "batch_size")}
    t = time.perf_counter()
    with pytest.raises(UserError, match="1000000000 configs, more than --max-configs 10000"):
        grid.expand(huge, "tiny")
    assert time.perf_counter() - t < 0.5  # refused from the sizes, nothing was expanded
    assert len(grid.expand({"n_layer": ["1", "2", "3"]}, "tiny", max_configs=3)) == 3
    with pytest.raises(UserError, match="max-configs 2"):
        grid.expand({"n_layer": ["1", "2", "3"]}, "tiny", max_configs=2)


def test_csv_row_longer_than_its_header_is_a_clean_error(tmp_path):
    c = tmp_path / "g.csv"
    c.write_text("n_layer\n1,2\n")
    with pytest.raises(UserError, match="line 2: more values than header columns"):
        grid.read_grid_file(str(c), "tiny")


def test_a_width_sweep_over_a_preset_derives_each_width_s_mlp_as_train_does():
    """--preset tiny fixes ffn_hidden 192 for width 64; a sweep over widths must not keep 192
    for every width (it was 6x to 1.5x the width, with no notice)."""
    from train.config import TrainConfig, model_config

    rows = grid.expand({"n_embd": ["32", "64", "128"], "n_head": ["2"]}, "tiny")
    assert [r["ffn_hidden"] for r in rows] == [None, 192, None]
    for r in rows:
        trained = model_config(TrainConfig.from_flat({"preset": "tiny", "n_embd": r["n_embd"],
                                                      "n_head": 2}), 256)  # fmt: skip
        assert grid.model_config(r).hidden == trained.hidden
    kept = grid.expand({"n_embd": ["128"], "n_head": ["2"], "ffn_hidden": ["192"]}, "tiny")
    assert kept[0]["ffn_hidden"] == 192  # given explicitly: kept


def test_seeds_expand_a_grid_file_too(tmp_path):
    import argparse

    from bench.sweep.cli import grid_rows

    g = tmp_path / "g.json"
    g.write_text('[{"n_layer": 1, "n_head": 2}, {"n_layer": 2, "n_head": 2}]')
    a = argparse.Namespace(grid=str(g), preset="tiny", max_configs=100, seeds=3)
    for k in grid.known_keys():
        setattr(a, "g_" + k, None)
    rows = grid_rows(a)
    assert [(r["n_layer"], r["seed"]) for r in rows] == [(n, s) for n in (1, 2) for s in range(3)]
