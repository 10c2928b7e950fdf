"""Data sources and the seed's sampler: determinism, exact resume, DDP split, file formats."""

import numpy as np
import pytest
import torch

from train.data import DataError, Sampler, embedded_corpus, get_data


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
    with pytest.raises(DataError, match="not found"):
        get_data(str(tmp_path / "missing.bin"))


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
    with pytest.raises(DataError, match="fewer than one global batch"):
        Sampler(np.arange(100, dtype=np.uint16), 8, 16)
