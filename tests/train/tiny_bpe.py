"""A small corpus and a byte-level BPE trained on it in the test (the `tokenizers` library), so the
prepare / sample tests need no download. Not a test module: imported by test_prepare/test_sample."""

from __future__ import annotations

import json
import random

import pytest

WORDS = "the quick brown fox jumps over a lazy dog while birds sing and cats sleep on mats".split()


def documents(n: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(n)]


def train_bpe(path, vocab_size: int = 300) -> str:
    """Write a byte-level BPE tokenizer.json with an <|endoftext|> token; returns its path."""
    tk = pytest.importorskip(
        "tokenizers", reason="tokenizers not installed: pip install 'steptime[prepare]'"
    )
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(documents(), trainer)
    tok.save(str(path))
    return str(path)


def write_jsonl(path, docs, field: str = "text") -> str:
    with open(path, "w") as fh:
        for d in docs:
            fh.write(json.dumps({field: d, "meta": 1}) + "\n")
    return str(path)
