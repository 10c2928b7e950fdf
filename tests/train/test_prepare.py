"""`train prepare`: formats in, train.bin + val.bin + meta.json out, tokenizers, workers, errors."""

from __future__ import annotations

import io
import json
import re
import sys

import numpy as np
import pytest
from tiny_bpe import documents, train_bpe, write_jsonl

from core import UserError
from train import prepare
from train.data import META_NAME, get_data
from train.tokenizer import load_codec


def run(argv, capsys=None) -> tuple[int, str]:
    rc = prepare.main([str(a) for a in argv])
    err = capsys.readouterr().err if capsys else ""
    return rc, err


@pytest.fixture()
def bpe(tmp_path):
    return train_bpe(tmp_path / "tok.json")


def test_jsonl_text_and_parquet_with_a_tokenizer_json(tmp_path, bpe, capsys):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed: pip install pyarrow")
    import pyarrow.parquet as pq

    docs = documents(60)
    write_jsonl(tmp_path / "a.jsonl", docs[:30])
    (tmp_path / "b.txt").write_text(docs[30] + "\n" + docs[31])  # one document with a newline
    pq.write_table(pa.table({"body": docs[32:], "n": list(range(28))}), tmp_path / "c.parquet")
    for name in ("a.jsonl", "b.txt", "c.parquet"):
        rc, err = run([tmp_path / name, "--out", tmp_path / f"o_{name}", "--tokenizer", bpe,
                       "--text-field", "body" if name == "c.parquet" else "text",
                       "--val-fraction", "0.2", "--workers", "1"], capsys)  # fmt: skip
        assert rc == 0, err
    out = tmp_path / "o_a.jsonl"
    meta = json.loads((out / META_NAME).read_text())
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16" and meta["documents"] == 30
    assert meta["tokenizer"] == {"kind": "hf", "file": "tokenizer.json", "source": bpe}
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert len(val) == int(np.ceil(0.2 * (len(train) + len(val))))
    # The stream is the documents in order, each followed by <|endoftext|> (id 0 here).
    codec = load_codec(meta["tokenizer"], str(out))  # the copy inside the dataset folder
    eot = meta["eot_token"]
    stream = np.concatenate([train, val]).tolist()
    assert stream.count(eot) == 30 and stream[-1] == eot
    texts = codec.decode(stream).split("<|endoftext|>")
    assert texts[:30] == docs[:30]
    tr, va, vocab = get_data(str(out))  # what `train --data DIR` reads
    assert vocab == 320 and np.array_equal(tr, train) and np.array_equal(va, val)
    text_stream = np.fromfile(tmp_path / "o_b.txt" / "train.bin", dtype=np.uint16).tolist()
    text_stream += np.fromfile(tmp_path / "o_b.txt" / "val.bin", dtype=np.uint16).tolist()
    assert codec.decode(text_stream) == docs[30] + "\n" + docs[31] + "<|endoftext|>"
    pmeta = json.loads((tmp_path / "o_c.parquet" / META_NAME).read_text())
    assert pmeta["documents"] == 28 and pmeta["text_field"] == "body"


def test_bytes_tokenizer_roundtrips_exact_bytes(tmp_path, capsys):
    text = "héllo wörld\n" * 50
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    rc, err = run([tmp_path / "t.txt", "--out", tmp_path / "o", "--val-fraction", "0.1"], capsys)
    assert rc == 0, err
    meta = json.loads((tmp_path / "o" / META_NAME).read_text())
    assert meta["tokenizer"] == {"kind": "bytes"} and meta["vocab_size"] == 256
    assert meta["eot_token"] is None  # bytes have no end-of-text token
    tr, va, vocab = get_data(str(tmp_path / "o"))
    assert vocab == 256 and bytes(np.concatenate([tr, va]).astype(np.uint8)) == text.encode()


def test_large_vocab_is_written_as_uint32(tmp_path, capsys):
    tk = pytest.importorskip("tokenizers", reason="tokenizers not installed")
    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000}
    tok = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "big.json"))
    (tmp_path / "t.txt").write_text("w69999 w3 w65536 w1 " * 10)
    rc, err = run([tmp_path / "t.txt", "--out", tmp_path / "o", "--tokenizer",
                   tmp_path / "big.json", "--val-fraction", "0.25"], capsys)  # fmt: skip
    assert rc == 0, err
    tr, va, vocab = get_data(str(tmp_path / "o"))
    assert tr.dtype == np.uint32 and vocab == 70_016
    assert tr[:4].tolist() == [69999, 3, 65536, 1] and len(va) == 10


def test_workers_write_the_same_bytes_as_one_process(tmp_path, bpe, monkeypatch, capsys):
    # Small batches so the two workers each get many tasks (results must come back in order).
    monkeypatch.setattr(prepare, "BATCH_DOCS", 7)
    write_jsonl(tmp_path / "a.jsonl", documents(100, seed=1))
    (tmp_path / "b.txt").write_text("\n".join(documents(30, seed=2)))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"o{workers}"
        argv = [tmp_path / "a.jsonl", tmp_path / "b.txt", "--out", out, "--tokenizer", bpe]
        rc, err = run(argv + ["--workers", workers], capsys)
        assert rc == 0, err
        outs.append([(out / n).read_bytes() for n in ("train.bin", "val.bin")])
    assert outs[0] == outs[1]


def test_tiktoken_encoding_path(tmp_path, monkeypatch, capsys):
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken not installed")
    # A real tiktoken Encoding built here (bytes as ranks + <|endoftext|>), served under the name
    # "gpt2" so prepare's by-name lookup is exercised without the network.
    enc = tiktoken.Encoding(
        name="tiny",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc)
    write_jsonl(tmp_path / "a.jsonl", ["ab", "cd"])
    rc, err = run([tmp_path / "a.jsonl", "--out", tmp_path / "o", "--tokenizer", "gpt2",
                   "--val-fraction", "0.3", "--workers", "1"], capsys)  # fmt: skip
    assert rc == 0, err
    meta = json.loads((tmp_path / "o" / META_NAME).read_text())
    assert meta["tokenizer"] == {"kind": "tiktoken", "name": "gpt2"} and meta["vocab_size"] == 257
    tr, va, _ = get_data(str(tmp_path / "o"))
    assert np.concatenate([tr, va]).tolist() == [97, 98, 256, 99, 100, 256]


def test_uncached_tiktoken_encoding_is_one_clean_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tiktoken", reason="tiktoken not installed")
    import tiktoken.load
    import tiktoken.registry

    def offline(*_a, **_k):
        raise ConnectionError("no network")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    (tmp_path / "t.txt").write_text("hello")
    rc, err = run([tmp_path / "t.txt", "--out", tmp_path / "o", "--tokenizer", "gpt2"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "tiktoken encoding 'gpt2' is not cached" in err and "TIKTOKEN_CACHE_DIR" in err
    rc, err = run([tmp_path / "t.txt", "--out", tmp_path / "o", "--tokenizer", "nope"], capsys)
    assert rc == 2 and "unknown tokenizer 'nope'" in err
    assert not (tmp_path / "o").exists()  # nothing written on a tokenizer error


@pytest.mark.parametrize(
    "setup, extra, match",
    [
        (lambda p: None, [], "input not found"),
        (
            lambda p: (p / "in.jsonl").write_text('{"text": "a"}\nnot json\n'),
            [],
            r"in.jsonl:2: not",
        ),
        (lambda p: (p / "in.jsonl").write_text('{"body": "a"}\n'), [], "no text field 'text'"),
        (lambda p: (p / "in.txt").write_text("abc"), ["--val-fraction", "1"], "val-fraction must"),
        (lambda p: (p / "in.txt").write_text("abc"), ["--workers", "0"], "--workers must be"),
        (lambda p: (p / "in.txt").write_text("ab"), [], "too few for train and validation"),
        (lambda p: (p / "in.txt").write_text("abc"), ["--bogus"], "unrecognized arguments"),
        (lambda p: (p / "in.txt").write_text("abc"), ["--eot", "<x>"], "special tokens"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, setup, extra, match):
    setup(tmp_path)
    src = next((str(p) for p in tmp_path.glob("in.*")), str(tmp_path / "missing.txt"))
    rc, err = run([src, "--out", tmp_path / "o", *extra], capsys)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert re.search(match, err), err
    assert not list(tmp_path.rglob("*.tmp.*"))  # no scratch left behind


def test_parquet_without_the_column_names_the_columns(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow", reason="pyarrow not installed")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["x y"]}), tmp_path / "c.parquet")
    rc, err = run([tmp_path / "c.parquet", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "has no column 'text' (columns: content); use --text-field" in err


def test_existing_dataset_needs_overwrite_and_stale_val_goes(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("some text to tokenize " * 20)
    args = [tmp_path / "t.txt", "--out", tmp_path / "o"]
    assert run(args, capsys)[0] == 0
    rc, err = run(args, capsys)
    assert rc == 2 and "already holds a dataset" in err and "--overwrite" in err
    rc, err = run(args + ["--overwrite", "--val-fraction", "0"], capsys)
    assert rc == 0, err
    assert not (tmp_path / "o" / "val.bin").exists()  # the old val.bin must not pass for new
    assert json.loads((tmp_path / "o" / META_NAME).read_text())["val_tokens"] == 0
    (tmp_path / "afile").write_text("x")
    rc, err = run([tmp_path / "t.txt", "--out", tmp_path / "afile"], capsys)
    assert rc == 2 and "is a file, not a folder" in err


def test_folder_input_and_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b.txt").write_text("second " * 30)
    (tmp_path / "in" / "a.txt").write_text("first " * 30)
    (tmp_path / "in" / "skip.bin").write_bytes(b"\0\1")
    rc, err = run([tmp_path / "in", "--out", tmp_path / "o", "--workers", "1"], capsys)
    assert rc == 0 and err == ""  # stderr is not a terminal here: no bar
    tr, _, _ = get_data(str(tmp_path / "o"))
    assert bytes(tr[:6].astype(np.uint8)) == b"first "  # sorted: a.txt before b.txt

    class Tty(io.StringIO):
        def isatty(self):
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    rc = prepare.main([str(tmp_path / "in"), "--out", str(tmp_path / "o2"), "--workers", "1"])
    assert rc == 0 and "tokenizing" in fake.getvalue()
    fake2 = Tty()
    monkeypatch.setattr(sys, "stderr", fake2)
    argv = [str(tmp_path / "in"), "--out", str(tmp_path / "o3"), "--no-progress"]
    assert prepare.main(argv) == 0 and fake2.getvalue() == ""


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        prepare.build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "(default: bytes)" in out and "(default: 0.01)" in out


def test_prepare_meta_name_matches_train_data():
    assert prepare.META_NAME == META_NAME
    with pytest.raises(UserError, match="unknown tokenizer spec"):
        load_codec({"kind": "nope"})


def test_text_pieces_tokenize_like_the_whole_file(tmp_path, bpe, monkeypatch, capsys):
    # Indented lines: a cut before "    x" would split the "\n    " whitespace run differently.
    text = "".join(f"{d}\n    {d[:9]}\n\n" for d in documents(40, seed=3))
    (tmp_path / "t.txt").write_text(text)
    outs = []
    for piece in (1 << 30, 16):  # one piece; many small pieces
        monkeypatch.setattr(prepare, "PIECE_CHARS", piece)
        out = tmp_path / f"o{piece}"
        rc, err = run(
            [tmp_path / "t.txt", "--out", out, "--tokenizer", bpe, "--workers", 1], capsys
        )
        assert rc == 0, err
        outs.append((out / "train.bin").read_bytes() + (out / "val.bin").read_bytes())
    assert outs[0] == outs[1]
    pieces = list(prepare._text_pieces(str(tmp_path / "t.txt")))
    assert len(pieces) > 10 and all(not p[0][:1].isspace() for p in pieces)
    assert "".join(p[0] for p in pieces) == text and [p[1] for p in pieces].count(True) == 1
