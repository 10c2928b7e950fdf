"""Data sources and the seed's sampler: determinism, exact resume, DDP split, file formats,
prepared dataset folders (meta.json)."""

import json

import numpy as np
import pytest
import torch

from core import UserError
from train.data import Sampler, data_meta, embedded_corpus, get_data


def test_embedded_corpus_is_stdlib_bytes_and_deterministic():
    tr, va, vocab = get_data()
    assert vocab == 256 and tr.dtype == np.uint8
    assert len(tr) + len(va) == len(embedded_corpus())
    assert len(va) > 10_000 and len(tr) > 1_000_000
    text = bytes(tr[:200_000]).decode("utf-8", errors="replace")
    assert "def " in text and "import " in text
    embedded_corpus.cache_clear()
    tr2, _, _ = get_data()
    assert np.array_equal(tr[:100_000], tr2[:100_000])


def test_bin_uint16_uint32_and_txt(tmp_path):
    toks = (np.arange(5000) * 7919 % 1000).astype(np.uint16)
    toks.tofile(tmp_path / "d.bin")
    tr, va, vocab = get_data(str(tmp_path / "d.bin"), val_fraction=0.1)
    assert vocab == 1024 and len(va) == 500 and np.array_equal(tr, toks[:4500])
    toks.astype(np.uint32).tofile(tmp_path / "d32.bin")
    tr32, _, _ = get_data(str(tmp_path / "d32.bin"), uint32=True, val_fraction=0.1)
    assert np.array_equal(tr32, toks[:4500].astype(np.uint32))
    (tmp_path / "t.txt").write_bytes(b"hello world " * 100)
    trt, _, vt = get_data(str(tmp_path / "t.txt"))
    assert vt == 256 and bytes(trt[:5]) == b"hello"
    with pytest.raises(UserError, match="not found"):
        get_data(str(tmp_path / "missing.bin"))


def _prepared(folder, train, val, **meta):
    folder.mkdir()
    dtype = meta.get("dtype", "uint16")
    np.asarray(train, dtype=dtype).tofile(folder / "train.bin")
    if val is not None:
        np.asarray(val, dtype=dtype).tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({"dtype": dtype, **meta}))
    return str(folder)


def test_prepared_folder_takes_vocab_dtype_and_val_from_meta(tmp_path):
    # Tokens stay below 10, so a max-based vocab would be 64: 300 -> 320 proves meta.json is read.
    train = np.arange(4000) % 10
    d = _prepared(tmp_path / "ds", train, [7, 8, 9, 7, 8], vocab_size=300, tokenizer={"kind": "x"})
    tr, va, vocab = get_data(d)
    assert vocab == 320 and tr.dtype == np.uint16 and np.array_equal(tr, train)
    assert va.tolist() == [7, 8, 9, 7, 8]  # the separate validation file, not a split of train
    assert data_meta(d)["tokenizer"] == {"kind": "x"}
    # The same through the folder's train.bin; dtype comes from meta.json even without uint32=True.
    d32 = _prepared(tmp_path / "ds32", [70000, 1, 2, 3], [5, 6], vocab_size=70001, dtype="uint32")
    tr32, va32, v32 = get_data(d32 + "/train.bin")
    assert tr32.dtype == np.uint32 and tr32[0] == 70000 and va32.tolist() == [5, 6]
    assert v32 == 70016 and data_meta(d32 + "/train.bin")["vocab_size"] == 70001


def test_prepared_folder_without_val_bin_holds_out_the_tail(tmp_path):
    d = _prepared(tmp_path / "ds", np.arange(1000) % 50, None, vocab_size=50)
    tr, va, vocab = get_data(d, val_fraction=0.1)
    assert (len(tr), len(va), vocab) == (900, 100, 64)


def test_train_bin_with_val_bin_beside_and_no_meta(tmp_path):
    np.arange(3000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(40, dtype=np.uint16).tofile(tmp_path / "val.bin")
    tr, va, vocab = get_data(str(tmp_path / "train.bin"))
    assert len(tr) == 3000 and len(va) == 40 and vocab == 3008  # max+1 rounded to 64
    assert data_meta(str(tmp_path / "train.bin")) is None
    assert data_meta(None) is None and data_meta(str(tmp_path / "x.txt")) is None


@pytest.mark.parametrize(
    "meta, match",
    [
        ("{not json", "cannot read"),
        ('{"vocab_size": "300", "dtype": "uint16"}', "vocab_size must be a positive integer"),
        ('{"vocab_size": 300, "dtype": "int8"}', "dtype must be one of"),
        ('{"vocab_size": 70000, "dtype": "uint16"}', "does not fit dtype uint16"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_meta_is_one_line_naming_the_file(tmp_path, meta, match):
    (tmp_path / "train.bin").write_bytes(b"\0" * 100)
    (tmp_path / "meta.json").write_text(meta)
    with pytest.raises(UserError, match=match) as e:
        get_data(str(tmp_path))
    assert str(tmp_path / "meta.json") in str(e.value) and "\n" not in str(e.value)


def test_unusable_data_paths_are_user_errors_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without meta.json; make one with `train prepare"):
        get_data(str(tmp_path / "empty"))
    d = _prepared(tmp_path / "ds", [1, 2, 3], None, vocab_size=10)
    (tmp_path / "ds" / "train.bin").write_bytes(b"\0" * 7)  # not a whole number of uint16
    with pytest.raises(UserError, match=r"train.bin: size 7 is not a whole number of uint16"):
        get_data(d)
    (tmp_path / "ds" / "train.bin").unlink()
    with pytest.raises(UserError, match="data file not found: .*train.bin"):
        get_data(d)
    with pytest.raises(UserError, match=r"missing.txt"):
        get_data(str(tmp_path / "missing.txt"))


def _all_batches(s, n):
    return [s.next_batch("cpu") for _ in range(n)]


def test_sampler_deterministic_resumable_and_shifted():
    toks = np.arange(20_000, dtype=np.uint16) % 50_000
    a = Sampler(toks, 4, 16, seed=3)
    batches = _all_batches(a, 30)
    x, y = batches[0]
    assert x.dtype == torch.int64 and x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    b = Sampler(toks, 4, 16, seed=3)
    b.set_step(17)
    for i in range(17, 30):
        bx, by = b.next_batch("cpu")
        assert torch.equal(bx, batches[i][0]) and torch.equal(by, batches[i][1])
    c = Sampler(toks, 4, 16, seed=4)
    assert not torch.equal(c.next_batch("cpu")[0], x)


def test_sampler_epoch_is_without_replacement():
    toks = np.arange(3000, dtype=np.uint16)
    s = Sampler(toks, 4, 9, seed=0)
    starts = np.concatenate([s.batch_indices(i) for i in range(s.steps_per_epoch)])
    assert len(set(starts.tolist())) == len(starts)  # no chunk twice in an epoch
    assert len(set((starts % 10).tolist())) == 1  # one offset per epoch: no overlap
    nxt = s.batch_indices(s.steps_per_epoch)  # next epoch: new permutation
    assert not np.array_equal(nxt, s.batch_indices(0))


def test_sampler_ranks_split_the_single_process_batch():
    toks = np.arange(10_000, dtype=np.uint16)
    single = Sampler(toks, 8, 16, seed=1)
    r0 = Sampler(toks, 4, 16, seed=1, rank=0, world_size=2)
    r1 = Sampler(toks, 4, 16, seed=1, rank=1, world_size=2)
    for step in range(5):
        both = np.concatenate([r0.batch_indices(step), r1.batch_indices(step)])
        assert np.array_equal(both, single.batch_indices(step))


def test_sampler_too_little_data():
    with pytest.raises(UserError, match="fewer than one global batch"):
        Sampler(np.arange(100, dtype=np.uint16), 8, 16)
