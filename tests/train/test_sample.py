"""`train prepare` -> `train --data DIR` -> `train sample`, offline, through the `train` CLI; and
the sampler's seeding, greedy decoding, vocabulary mask and errors."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from tiny_bpe import documents, train_bpe, write_jsonl

from core import UserError
from train import cli
from train.sample import build_parser, find_checkpoint, generate, load_model, pick_codec, run_data
from train.tokenizer import ByteCodec, HFCodec

STEPS = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A prepared 300-token BPE dataset and a 6-step tiny run on it (preset vocab 256, no
    --vocab-size: the model takes the data's 300 -> 320), trained with relative paths in its own
    folder; the tests sample from another working directory."""
    root = tmp_path_factory.mktemp("e2e")
    tok = train_bpe(root / "tok.json")
    write_jsonl(root / "docs.jsonl", documents(150))
    data, out = root / "data", root / "run"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        argv = ["prepare", "docs.jsonl", "--out", "data", "--tokenizer", tok, "--val-fraction", 0.1]
        assert cli.main([str(x) for x in argv]) == 0
        meta = json.loads((data / "meta.json").read_text())
        assert meta["vocab_size"] == 300
        assert cli.main(_train_argv("data", "run", STEPS)) == 0
    finally:
        os.chdir(cwd)
    return {"root": root, "data": data, "out": out}


def _train_argv(data, out, steps) -> list[str]:
    argv = ["--preset", "tiny", "--data", data, "--iterations", steps, "--warmup-steps", 1,
            "--batch-size", 4, "--acc-steps", 1, "--eval-batches", 1, "--lr", "3e-3",
            "--out", out, "--no-progress"]  # fmt: skip
    return [str(x) for x in argv]


@pytest.fixture(scope="module")
def bytes_run(tmp_path_factory):
    """A 1-step run on a text file (bytes, vocab 256)."""
    root = tmp_path_factory.mktemp("bytes")
    (root / "t.txt").write_text("abcdefgh " * 3000)
    assert cli.main(_train_argv(root / "t.txt", root / "run", 1)) == 0
    return root / "run"


def _args(ckpt, *extra) -> argparse.Namespace:
    return build_parser().parse_args([str(ckpt), *map(str, extra)])


def test_end_to_end_sample_decodes_with_the_runs_tokenizer(run, capsys):
    capsys.readouterr()
    argv = ["sample", run["out"], "--prompt", "the quick", "--max-new-tokens", 8, "--seed", 3]
    assert cli.main([str(x) for x in argv]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("the quick") and "warning" not in err
    model, payload = load_model(str(run["out"]), torch.device("cpu"))  # the final latest/
    assert payload["step"] == STEPS and model.cfg.vocab_size == 320
    assert payload["train_config"].data.data == str(run["data"])  # stored absolute
    codec = pick_codec(_args(run["out"]), payload)
    assert isinstance(codec, HFCodec) and codec.spec["file"] == str(run["data"] / "tokenizer.json")
    # The printed text is exactly the tokenizer's decoding of what the model generates.
    prompt = codec.encode_batch(["the quick"])[0].tolist()
    gen = torch.Generator().manual_seed(3)
    kw = {"num_samples": 1, "temperature": 0.8, "top_k": 200, "vocab": 300}
    ids = generate(model, prompt, 8, gen=gen, **kw)[0]
    assert out == "the quick" + codec.decode(ids) + "\n"


def test_seed_greedy_and_top1(run):
    model, _ = load_model(str(run["out"]), torch.device("cpu"))
    prompt = [5, 6, 7]

    def draw(seed, **kw):
        kw = {"num_samples": 3, "temperature": 1.0, "top_k": 0, "vocab": 300} | kw
        return generate(model, prompt, 12, gen=torch.Generator().manual_seed(seed), **kw)

    a, b, c = draw(0), draw(0), draw(1)
    assert a == b and a != c and all(len(s) == 12 for s in a)
    greedy = draw(0, temperature=0.0)
    assert greedy == draw(9, temperature=0.0) == draw(4, top_k=1)
    assert greedy[0] == greedy[1] == greedy[2]


def test_padding_ids_are_never_drawn(run):
    model, _ = load_model(str(run["out"]), torch.device("cpu"))
    kw = {"num_samples": 8, "temperature": 3.0, "top_k": 0, "gen": torch.Generator()}
    ids = generate(model, [1, 2], 12, vocab=40, **kw)
    assert max(max(s) for s in ids) < 40


def test_tokenizer_choice(tmp_path, run):
    assert isinstance(pick_codec(_args("x"), {"config": {"data": {"data": None}}}), ByteCodec)
    assert isinstance(pick_codec(_args("x"), {"args": {"data": None}}), ByteCodec)  # older runs
    flat = {"args": {"data": str(run["data"])}}
    assert isinstance(pick_codec(_args("x"), flat), HFCodec)
    named = {
        "config": {"data": {"data": None, "dataset": "data", "datasets_dir": str(run["root"])}}
    }
    assert run_data(named) == str(run["root"] / "data")
    assert isinstance(pick_codec(_args("x", "--tokenizer", "bytes"), flat), ByteCodec)
    (tmp_path / "t.txt").write_text("hello")
    assert isinstance(
        pick_codec(_args("x"), {"args": {"data": str(tmp_path / "t.txt")}}), ByteCodec
    )
    with pytest.raises(UserError, match="is not there; pass --data DIR"):
        pick_codec(_args("x"), {"config": {"data": {"data": str(tmp_path / "gone")}}})
    with pytest.raises(UserError, match="does not record its data"):
        pick_codec(_args("x"), {"model": {}})
    with pytest.raises(UserError, match="no meta.json to name its tokenizer"):
        pick_codec(_args("x", "--data", tmp_path), {})


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
        (["--top-k", "-2"], "--top-k must be >= 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--num-samples", "0"], "--num-samples must be >= 1"),
        (["--device", "foo"], "--device must be auto, cpu, cuda or cuda:N, got 'foo'"),
        (["--data", "/nonexistent/data"], "--data /nonexistent/data not found"),
        (["--prompt", ""], "--prompt encodes to no tokens"),
        (["--tokenizer", "{tok}"], "tokenizer has 300 tokens but the model only 256"),
    ],
)
def test_bad_input_is_one_line(run, bytes_run, capsys, extra, match):
    capsys.readouterr()
    extra = [e.replace("{tok}", str(run["root"] / "tok.json")) for e in extra]
    assert cli.main(["sample", str(bytes_run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1, err


def test_missing_checkpoints(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert cli.main(["sample", str(tmp_path)]) == 2
    assert "kept no checkpoint; train with --latest-ckpt-interval" in capsys.readouterr().err


def test_relative_data_of_older_runs_resolves_against_the_training_directory(run, tmp_path):
    """Checkpoints written before paths were stored absolute: `data` relative to where train ran,
    which is the run folder minus its relative --out."""
    ckpt = str(run["out"] / "latest" / "ckpt.pt")
    nested = {"config": {"data": {"data": "data"}, "io": {"out": "run"}}, "path": ckpt}
    assert run_data(nested) == str(run["data"])
    assert run_data({"args": {"data": "data", "out": "./run/"}, "path": ckpt}) == str(run["data"])
    named = {"args": {"data": None, "dataset": "data", "datasets_dir": ".", "out": "run"}}
    assert run_data({**named, "path": ckpt}) == str(run["data"])
    elsewhere = str(tmp_path / "x" / "latest" / "ckpt.pt")  # not under its --out: kept as written
    assert run_data({**nested, "path": elsewhere}) == "data"


def test_a_killed_checkpoint_write_is_no_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    for step in (3, 9):
        (tmp_path / "ckpts" / str(step)).mkdir(parents=True)
    (tmp_path / "ckpts" / "3" / "ckpt.pt").write_bytes(b"x")
    (tmp_path / "ckpts" / "9" / "ckpt.pt.tmp.4242").write_bytes(b"x")  # killed mid-write
    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / "ckpt.pt.tmp.4242").write_bytes(b"x")
    assert find_checkpoint(str(tmp_path)) == str(tmp_path / "ckpts" / "3")
