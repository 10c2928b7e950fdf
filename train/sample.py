"""`train sample CKPT`: generate text from a checkpoint, to sanity-check a run by eye.

Autoregressive sampling as in nanoGPT's `sample.py`: temperature-scaled logits, optionally cut to
the top k, one token drawn at a time from a seeded generator (temperature 0 = greedy). The context
is the last `sequence_length` tokens. Tokens are decoded with the run's tokenizer: bytes for the
embedded corpus and text files, else the tokenizer named in the prepared dataset's meta.json.
"""

from __future__ import annotations

import math
import os
import sys
import unicodedata
from collections.abc import Sequence

from core import ArgParser, UserError, run_cli
from train.data import padded_vocab
from train.tokenizer import ByteCodec, Codec, load_codec, parse_spec


def build_parser() -> ArgParser:
    p = ArgParser(prog="train sample", description="Generate text from a train checkpoint.")
    p.add_argument(
        "ckpt",
        metavar="CKPT",
        help="checkpoint file, its folder, or a run folder (its latest/ or highest ckpts/N)",
    )
    p.add_argument("--prompt", default="\n", metavar="TEXT", help="text the samples continue")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to draw")
    p.add_argument(
        "--max-new-tokens", type=int, default=200, metavar="N", help="tokens generated per sample"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        metavar="T",
        help="softmax temperature; 0 = greedy (always the most likely token)",
    )
    p.add_argument(
        "--top-k", type=int, default=200, metavar="K", help="sample among the K likeliest; 0 = all"
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed")
    p.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="prepared dataset whose meta.json names the tokenizer (default: the run's --data)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="NAME",
        help="override the tokenizer: bytes, a tiktoken encoding, or a tokenizer.json",
    )
    return p


def _check(a) -> None:
    if a.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {a.num_samples}")
    if a.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    if not (math.isfinite(a.temperature) and a.temperature >= 0):
        raise UserError(f"--temperature must be a finite number >= 0, got {a.temperature}")
    if a.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {a.top_k}")
    if not 0 <= a.seed < 2**63:  # torch.Generator.manual_seed's range
        raise UserError(f"--seed must be in 0..2**63-1, got {a.seed}")
    if a.num_samples * a.max_new_tokens > 10**8:
        raise UserError("--num-samples x --max-new-tokens is over 10**8 tokens; ask for fewer")


def find_checkpoint(path: str) -> str:
    """A checkpoint path for train.checkpoint.load: a run folder without latest/ckpt.pt gives its
    highest-step ckpts/N/ckpt.pt (folders holding only a killed write's temporary file are no
    checkpoints)."""
    ckpts = os.path.join(path, "ckpts")
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, "ckpt.pt")):
        return path
    if os.path.isfile(os.path.join(path, "latest", "ckpt.pt")):
        return path
    steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if os.path.isdir(ckpts) else []
    steps = [n for n in steps if os.path.isfile(os.path.join(ckpts, str(n), "ckpt.pt"))]
    if steps:
        return os.path.join(ckpts, str(max(steps)))
    if os.path.isfile(os.path.join(path, "metrics.jsonl")):
        raise UserError(
            f"run {path} kept no checkpoint; train with --latest-ckpt-interval N "
            "(or without --final-ckpt false)"
        )
    return path


def _recorded(payload: dict) -> tuple:
    """(data, dataset, datasets_dir, out) as the training run recorded them."""
    tc = payload.get("train_config")  # the TrainConfig train.checkpoint.load parsed
    if tc is not None:
        d = tc.data
        return d.data, d.dataset, d.datasets_dir, tc.io.out
    cfg = payload.get("config") or payload.get("args")  # TrainConfig sections, or old flat args
    if not isinstance(cfg, dict) or "data" not in cfg:
        raise UserError("the checkpoint does not record its data; pass --data DIR or --tokenizer")
    d, io = cfg["data"], cfg.get("io")
    if not isinstance(d, dict):  # flat args: "data" is the path itself
        d, io = {**cfg, "data": d}, cfg
    io = io if isinstance(io, dict) else {}
    return d.get("data"), d.get("dataset"), d.get("datasets_dir"), io.get("out")


def training_cwd(payload: dict, out) -> str | None:
    """The directory `train` ran in, when the checkpoint's run folder ends with its relative
    --out (runs/a/ckpts/6/ckpt.pt with out "runs/a" ran in the folder holding runs/)."""
    path = payload.get("path")
    if not isinstance(path, str) or not isinstance(out, str) or not out or os.path.isabs(out):
        return None
    from train.checkpoint import run_dir_of

    run, rel = run_dir_of(path), os.path.normpath(out)
    if rel.startswith("..") or not (run == rel or run.endswith(os.sep + rel)):
        return None
    return run[: len(run) - len(rel)] or os.sep


def run_data(payload: dict) -> str | None:
    """The data folder/file of the run that wrote a checkpoint (None: the embedded corpus).

    Reads the checkpoint's TrainConfig (or its older flat "args"); a relative path (written
    before train stored absolute ones) is resolved against the directory the run trained in.
    UserError when the checkpoint records no data setting.
    """
    data, dataset, root, out = _recorded(payload)
    base = training_cwd(payload, out)

    def where(p):
        if not isinstance(p, str) or os.path.isabs(p) or base is None:
            return p
        cand = os.path.join(base, p)
        return cand if os.path.exists(cand) else p

    data, dataset, root = where(data), where(dataset), where(root)
    if data is None and isinstance(dataset, str):  # --dataset NAME: a folder, or NAME in root
        cands = [dataset] + ([os.path.join(root, dataset)] if isinstance(root, str) else [])
        return next((c for c in cands if os.path.isdir(c)), cands[-1])
    return data if isinstance(data, str) else None


def pick_codec(a, payload: dict) -> Codec:
    """--tokenizer, else the meta.json of --data or of the run's data, else bytes."""
    from train.data import data_meta

    if a.tokenizer is not None:
        return load_codec(parse_spec(a.tokenizer))
    if a.data is not None and not os.path.exists(a.data):
        raise UserError(f"--data {a.data} not found")
    data = a.data if a.data is not None else run_data(payload)
    if data is None:
        return ByteCodec()  # the embedded corpus
    if a.data is None and not os.path.exists(data):
        raise UserError(f"the run's data {data} is not there; pass --data DIR or --tokenizer NAME")
    meta = data_meta(data)
    if meta is not None:
        folder = data if os.path.isdir(data) else os.path.dirname(os.path.abspath(data))
        return load_codec(meta.get("tokenizer") or {"kind": "bytes"}, folder)
    if os.path.isdir(data) or data.endswith(".bin"):
        raise UserError(f"{data} has no meta.json to name its tokenizer; pass --tokenizer NAME")
    return ByteCodec()  # a text file, read as bytes


def load_model(path: str, device):
    """(model in eval mode, checkpoint payload) of a train checkpoint."""
    from model.config import ModelConfig
    from model.transformer import Transformer
    from train import checkpoint as ckpt_io

    payload = ckpt_io.load(find_checkpoint(path), map_location=device)
    cfg_dict = payload.get("model_config")
    if not isinstance(cfg_dict, dict):
        raise UserError(f"{path} has no model_config; it was written by an older train")
    try:
        model = Transformer(ModelConfig.from_dict(cfg_dict))
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(
            f"{path}: weights do not fit its model_config: {e}".splitlines()[0]
        ) from None
    return model.to(device).eval(), payload


def generate(model, prompt: list[int], n_new: int, *, num_samples, temperature, top_k, vocab, gen):
    """Token ids (num_samples lists of n_new) continuing `prompt`; ids >= vocab are never drawn."""
    import torch

    device = next(model.parameters()).device
    x = torch.tensor([prompt] * num_samples, dtype=torch.long, device=device)
    ctx_len = model.cfg.sequence_length
    with torch.no_grad():
        for _ in range(n_new):
            logits, _ = model(x[:, -ctx_len:])
            logits = logits[:, -1, :].float()
            logits[:, vocab:] = -math.inf  # padding rows of the embedding are no tokens
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, vocab), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen)
            x = torch.cat([x, nxt], dim=1)
    return x[:, len(prompt) :].tolist()


def sample(a) -> list[str]:
    """The completions (prompt not included) for parsed arguments `a`."""
    import torch

    _check(a)
    from train.session import resolve_device

    # every spelling as train reads it (cuda gets an index), before the checkpoint is read: a
    # device fault is not the file's
    device = resolve_device(a.device, 1, 0)
    model, payload = load_model(a.ckpt, device)
    codec = pick_codec(a, payload)
    if codec.vocab_size > model.cfg.vocab_size:
        msg = f"tokenizer has {codec.vocab_size} tokens but the model only {model.cfg.vocab_size}"
        raise UserError(msg + "; pass the run's --data DIR or --tokenizer")
    if model.cfg.vocab_size > padded_vocab(codec.vocab_size):  # e.g. a BPE run decoded as bytes
        print(
            f"warning: the model has {model.cfg.vocab_size} tokens, the tokenizer only "
            f"{codec.vocab_size}; if the text looks wrong, pass the run's --data DIR",
            file=sys.stderr,
        )
    prompt = codec.encode_batch([a.prompt])[0].tolist()
    if not prompt:
        raise UserError("--prompt encodes to no tokens; give at least one character")
    gen = torch.Generator(device=device).manual_seed(a.seed)
    outs = generate(
        model,
        prompt,
        a.max_new_tokens,
        num_samples=a.num_samples,
        temperature=a.temperature,
        top_k=a.top_k,
        vocab=codec.vocab_size,
        gen=gen,
    )
    return [codec.decode(ids) for ids in outs]


def printable(text: str) -> str:
    """Control characters other than newline and tab as escapes (\\x1b), so generated bytes
    cannot drive a terminal (colours, cursor moves, a title); text is otherwise unchanged."""
    return "".join(
        c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text
    )


def _body(argv: Sequence[str]) -> int:
    a = build_parser().parse_args(argv)
    show = printable if sys.stdout.isatty() else str  # a pipe or file gets the text as is
    for i, text in enumerate(sample(a)):
        if i:
            sys.stdout.write("\n---------------\n")
        sys.stdout.write(show(a.prompt + text) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
