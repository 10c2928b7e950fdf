"""Grid expansion, value parsing, validation, config_id stability and shard coverage."""

from __future__ import annotations

import pytest

from bench import grid


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
    with pytest.raises(grid.GridError, match=msg.replace("(", r"\(")):
        grid.expand(lists, "tiny")


def test_validate_reasons():
    ok = grid.expand({}, "tiny")[0]
    assert grid.validate(ok) is None
    assert "divisible" in grid.validate({**ok, "n_embd": 30})
    assert "dtype" in grid.validate({**ok, "dtype": "int8"})
    assert "batch_size" in grid.validate({**ok, "batch_size": 0})


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
    with pytest.raises(grid.GridError):
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
    with pytest.raises(grid.GridError, match="JSON list"):
        grid.read_grid_file(str(bad))
