"""Every bad input to the timemodel CLI is one `error: ...` line and exit code 2 (no traceback,
no hang, no NaN written): the timemodel cases of the reliability list, and the usual mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timemodel.cli import main

ROOT = Path(__file__).resolve().parents[2]
TM = {
    "features": ["flops", "bytes"],
    "intercept": 2e-3,
    "coefficients": {"flops": 1e-11, "bytes": 2e-10},
    "feature_ranges": {"flops": [1e7, 1e12], "bytes": [1e6, 1e10]},
    "device_name": "Test Device 9000",
    "dtype": "float32",
}
LAW = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37, "convention": "porian"}


@pytest.fixture()
def files(tmp_path):
    paths = {}
    variants = {
        "tm": TM,
        "law": LAW,
        "tm_str": TM | {"coefficients": {"flops": "1e-11"}},
        "tm_ranges": TM | {"feature_ranges": {"params": 5}},
        "tm_unknown": TM | {"coefficients": {"warp_drive": 1.0}},
        "tm_nan": TM | {"intercept": float("nan")},
        "law_alpha": LAW | {"alpha": 1e6},
        "law_neg": LAW | {"E": -1.0},
        "law_conv": LAW | {"convention": "mine"},
    }
    for name, obj in variants.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(obj))
    runs = tmp_path / "runs.csv"
    runs.write_text(
        "N,D,loss\n" + "\n".join(f"{1e6 * k},{1e8 * k},{3 - 0.1 * k}" for k in range(1, 9))
    )
    paths["runs"] = runs
    paths["missing"] = tmp_path / "nope.json"
    paths["out"] = tmp_path / "out.json"
    paths["csv"] = tmp_path / "top.csv"
    return paths


# Each case: the argv as one line; {S}, {L}, {SL}, {REST} are the pieces below, {name} the files.
PREFIX = {
    "S": "search --time-model {tm} --loss-law {law} --space small",
    "L": "fit-loss {runs} --out {out} --params-col N --tokens-col D --loss-col loss",
    "SL": "search --time-model {tm} --loss-law",
    "REST": "n_embd=64,n_head=2,ffn_mult=2,batch_size=2",
}
CASES = {
    # issue-9 cases
    "budgets zero": "{L} --budgets 0",
    "budgets negative": "{L} --budgets=-1e21",
    "bootstrap negative": "{L} --bootstrap -1",
    "predict hours inf": "predict {tm} --preset tiny --hours inf",
    "predict hours 1e308": "predict {tm} --preset tiny --hours 1e308",
    "predict hours nan": "predict {tm} --preset tiny --hours nan",
    "string coefficient": "predict {tm_str} --preset tiny",
    "feature_ranges scalar": "predict {tm_ranges} --preset tiny",
    "nan intercept": "predict {tm_nan} --preset tiny",
    "unknown feature": "predict {tm_unknown} --preset tiny",
    "law alpha 1e6": "predict {tm} --preset tiny --hours 1 --loss-law {law_alpha}",
    "law negative E": "{SL} {law_neg} --hours 1",
    "law convention": "{SL} {law_conv} --hours 1",
    "search hours inf": "{S} --hours inf --out {csv}",
    "search space 1e9": "{SL} {law} --hours 1 --space n_layer=1:1e9,{REST}",
    "search grid over cap": "{SL} {law} --hours 1 --space small --max-candidates 100",
    "search space inf": "{SL} {law} --hours 1 --space n_layer=1:inf,{REST}",
    # the usual mistakes
    "unknown flag": "predict {tm} --preset tiny --frobnicate",
    "no command": "",
    "unknown preset": "predict {tm} --preset nope",
    "bad shape": "predict {tm} --n-layer 2 --n-embd 30 --n-head 4",
    "missing shape": "predict {tm} --n-layer 2",
    "missing model": "predict {missing} --preset tiny",
    "law as time model": "predict {law} --preset tiny",
    "batch zero": "predict {tm} --preset tiny --batch-size 0",
    "missing law": "{SL} {missing} --hours 1",
    "bad space": "{SL} {law} --space n_layer=1 --hours 1",
    "space key": "{SL} {law} --space depth=2,n_embd=64,n_head=2,ffn_mult=2,batch_size=2 --hours 1",
    "nothing fits": "{S} --hours 1 --max-memory-gb 1e-9",
    "top zero": "{S} --hours 1 --top 0",
    "describe gqa": "describe --n-layer 2 --n-embd 64 --n-head 8 --n-kv-head 3",
    "fit missing table": "fit {missing} --out {out}",
    "fit missing shipped sub-table": "fit cpu_sweep/nope --out {out}",
    "fit too few": "fit {runs} --out {out}",
    "fit-loss too few": "{L} --drop-highest 4",
    "fit-loss no column": "fit-loss {runs} --out {out} --params-col X",
    "isoflop no group": "fit-isoflop {runs} --group-col C",
    "isoflop no group col": "fit-isoflop {runs}",
}


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_error_exit_2(files, capsys, name):
    line = CASES[name].format(**PREFIX, **{k: "{" + k + "}" for k in files})
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in line.split()]
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 10  # refused up front, not after a long run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not files["csv"].exists() and not files["out"].exists()


def test_fit_rejects_bad_table_values(tmp_path, capsys):
    rows = "n_layer,n_embd,n_head,vocab_size,sequence_length,batch_size,step_ms_median\n"
    for bad, what in (("2.5,64,4,256,64,4,10", "n_layer"), ("2,64,4,256,64,4,-1", "step_ms")):
        path = tmp_path / "t.csv"
        path.write_text(rows + bad + "\n" + "\n".join("2,64,4,256,64,4,10" for _ in range(9)))
        assert main(["fit", str(path), "--out", str(tmp_path / "o.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0]


def test_help_shows_defaults_and_metavars():
    from timemodel.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    for name, p in sub.items():
        text = p.format_help()
        for act in p._actions:
            if act.option_strings and act.dest != "help":
                assert act.help, f"{name} {act.option_strings} has no help"
                assert act.metavar is None or act.metavar.upper() == act.metavar
        assert "(default:" in text, name


def test_cli_imports_no_torch():
    code = "import sys, timemodel.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0"])
def test_describe_refuses_a_peak_no_device_has(value, capsys):
    from timemodel.cli import main

    assert main(["describe", "--preset", "tiny", "--peak-flops", value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --peak-flops must be a finite number > 0") and "\n" not in err


def test_search_refuses_vocab_size_0(tmp_path, capsys):
    from timemodel.cli import main

    argv = ["search", "--time-model", "x.json", "--loss-law", "y.json", "--hours", "1"]
    assert main([*argv, "--vocab-size", "0"]) == 2
    assert "--vocab-size must be in 1..1e7, got 0" in capsys.readouterr().err
