"""Tokenizers for `train prepare` and `train sample`: bytes, tiktoken encodings, Hugging Face
tokenizer.json files.

A tokenizer is named by a small JSON-able spec, stored in a prepared dataset's meta.json:
{"kind": "bytes"}, {"kind": "tiktoken", "name": "gpt2"}, or {"kind": "hf", "file": PATH}, where a
relative PATH is relative to the dataset folder. `load_codec(spec)` turns it into a `Codec`.
tiktoken and tokenizers are optional packages; a missing one is a one-line UserError.
"""

from __future__ import annotations

import os

import numpy as np

from core import UserError

EXTRA_HINT = "pip install 'steptime[prepare]'"
# End-of-text spellings looked up in a tokenizer.json when --eot is "auto", in this order.
EOT_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


def parse_spec(arg: str) -> dict:
    """Spec from a command-line name: "bytes", a tokenizer.json (or a folder holding one), or the
    name of a tiktoken encoding (gpt2, cl100k_base, ...)."""
    if arg == "bytes":
        return {"kind": "bytes"}
    looks_like_path = arg.endswith(".json") or os.sep in arg or os.path.exists(arg)
    if looks_like_path:
        path = os.path.join(arg, "tokenizer.json") if os.path.isdir(arg) else arg
        if not os.path.isfile(path):
            raise UserError(f"tokenizer file not found: {path}")
        return {"kind": "hf", "file": os.path.abspath(path)}
    return {"kind": "tiktoken", "name": arg}


class Codec:
    """encode_batch(texts) -> token id arrays; decode(ids) -> text; vocab_size; eot (id or None)."""

    spec: dict
    vocab_size: int
    eot: int | None = None

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_id(self, token: str) -> int | None:
        """Id of a special token spelled `token`, or None when the tokenizer has no such token."""
        return None


class ByteCodec(Codec):
    """UTF-8 bytes as tokens (vocab 256), as in the embedded corpus and `--data FILE.txt`."""

    def __init__(self) -> None:
        self.spec = {"kind": "bytes"}
        self.vocab_size = 256

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class TiktokenCodec(Codec):
    def __init__(self, name: str, threads: int = 8) -> None:
        try:
            import tiktoken
        except ImportError:
            raise UserError(
                f"tokenizer {name!r} needs the tiktoken package: {EXTRA_HINT}"
            ) from None
        try:
            self.enc = tiktoken.get_encoding(name)
        except ValueError as e:  # unknown encoding name
            msg = f"unknown tokenizer {name!r} ({str(e).splitlines()[0]}); use bytes, a "
            raise UserError(msg + "tiktoken encoding name, or a tokenizer.json path") from None
        except Exception as e:  # noqa: BLE001  (requests/OSError/... when the BPE file is not cached)
            raise UserError(
                f"tiktoken encoding {name!r} is not cached and could not be downloaded "
                f"({type(e).__name__}); run once with network access or set TIKTOKEN_CACHE_DIR to "
                "a folder holding its cached files, or use --tokenizer bytes / tokenizer.json"
            ) from None
        self.spec = {"kind": "tiktoken", "name": name}
        self.vocab_size = int(self.enc.n_vocab)
        self.threads = threads

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        out = self.enc.encode_ordinary_batch(texts, num_threads=self.threads)
        return [np.asarray(ids, dtype=np.int64) for ids in out]

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode([i for i in ids if i < self.vocab_size])

    def token_id(self, token: str) -> int | None:
        if token not in self.enc.special_tokens_set:
            return None
        return int(self.enc.encode_single_token(token))


class HFCodec(Codec):
    def __init__(self, path: str, parallel: bool = True) -> None:
        if not parallel:  # one process per core already: no thread pool inside each
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UserError(f"{path} needs the tokenizers package: {EXTRA_HINT}") from None
        if not os.path.isfile(path):
            raise UserError(f"tokenizer file not found: {path}")
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001  (the Rust side raises plain Exception)
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"cannot load tokenizer {path}: {why}") from None
        self.spec = {"kind": "hf", "file": path}
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encs = self.tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i < self.vocab_size], skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


def load_codec(spec: dict, base_dir: str | None = None, *, parallel: bool = True) -> Codec:
    """The codec of `spec`; a relative tokenizer file is looked up in `base_dir`."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "bytes":
        return ByteCodec()
    if kind == "tiktoken" and isinstance(spec.get("name"), str):
        return TiktokenCodec(spec["name"], threads=8 if parallel else 1)
    if kind == "hf" and isinstance(spec.get("file"), str):
        path = spec["file"]
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return HFCodec(path, parallel=parallel)
    raise UserError(f"unknown tokenizer spec {spec!r}; expected kind bytes, tiktoken or hf")


def pick_eot(codec: Codec, eot: str) -> int | None:
    """The end-of-text id appended after each document: "none", "auto", or a token's spelling."""
    if eot == "none" or isinstance(codec, ByteCodec):
        if eot not in ("none", "auto"):
            raise UserError("--eot needs a tokenizer with special tokens; bytes has none")
        return None
    if eot == "auto":
        return next((i for t in EOT_CANDIDATES if (i := codec.token_id(t)) is not None), None)
    found = codec.token_id(eot)
    if found is None:
        raise UserError(f"--eot {eot!r} is not a token of the tokenizer; use auto or none")
    return found
