"""The `train` flags: one per TrainConfig field (help and default from the field), plus the seed
code's spellings and the seed flags steptime refuses, each with its reason.

Flag names follow the seed code of Hägele et al. 2024 (arXiv:2405.18392), upstream
epfml/schedules-and-scaling `src/config/base.py`; its sibling epfml/llm-baselines spells flags with
underscores (`--eval_interval`), which are accepted too, and older versions call the evaluation
interval `--eval-freq`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from core import UserError
from train.config import SECTIONS, field_default, field_help

# Extra spellings of a field's flag (besides --name-with-dashes and --name_with_underscores).
ALIASES = {"eval_interval": ("--eval-freq",)}
# Seed-code flags that steptime does not take, and why; each is refused with its reason.
REFUSED = {
    "--full-eval-at": "validation always uses --eval-batches fixed batches; raise --eval-batches",
    "--distributed-backend": "launch with torchrun: nccl on CUDA and gloo on the CPU are chosen",
    "--resume-from-swa": "the seed code never reads it either; use --resume-from",
    "--eval-seq-prefix": "generate text with `train sample CKPT --prompt TEXT`",
    "--log-dynamics": "training-dynamics logging is not implemented",
    "--dynamics-logger-cfg": "training-dynamics logging is not implemented",
    "--tokenizer": "the tokenizer is chosen by `train prepare --tokenizer NAME`; "
    "--data/--dataset read it from meta.json",
    "--parallel-block": "parallel attention/MLP blocks are not implemented",
    "--use-pretrained": "runs start from scratch; continue one with --resume-from",
    "--from-dense": "runs start from scratch; continue one with --resume-from",
    "--wandb-entity": "set the WANDB_ENTITY environment variable instead",
    "--run-prefix": "name the run with --experiment-name",
}
GROUP_TITLES = {
    "schedule": "learning-rate schedule",
    "optim": "optimizer",
    "averaging": "weight averaging (SWA windows, EMA)",
    "data": "data",
    "io": "run directory, logging, checkpoints",
    "model": "model",
    "runtime": "device, precision, kernels",
}


def parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class Refuse(argparse.Action):
    """A seed flag steptime does not take: one line saying why."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string} is not supported: {self.help}")


def flag_of(name: str, meta: Any) -> str:
    return "--" + meta.get("flag", name).replace("_", "-")


def _kind(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    return t.split("|")[0].strip()


def add_field_flag(group, f: dataclasses.Field, default: Any = None) -> None:
    """The flag of one TrainConfig field: its name, aliases, type, choices and help from the
    field; `default` is what the help shows (the parser's own default stays unset)."""
    kind, meta = _kind(f), f.metadata
    names = [flag_of(f.name, meta), *meta.get("aliases", ()), *ALIASES.get(f.name, ())]
    text = field_help(f.name)
    if "(default" not in text:  # a help that explains its default says it once
        text += f" (default: {'unset' if default is None else default})"
    kw: dict[str, Any] = {"dest": f.name, "help": text}
    if kind == "bool":
        kw.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
    else:
        kw["type"] = meta.get("type") or {"int": int, "float": float}.get(kind, str)
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        else:
            kw["metavar"] = meta.get("metavar") or {"int": "N", "float": "X"}.get(kind, "NAME")
    group.add_argument(*names, **kw)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults stay unset so typed flags can be told apart."""
    for sec, cls in SECTIONS.items():
        group = p.add_argument_group(GROUP_TITLES[sec])
        for f in dataclasses.fields(cls):
            add_field_flag(group, f, field_default(f.name))


def add_train_flags(group, names: tuple[str, ...], defaults: dict[str, Any]) -> None:
    """Flags for some TrainConfig fields (another command's, e.g. `bench sweep`), whose values
    stay unset (SUPPRESS) unless given; `defaults` are that command's base values."""
    fields = {f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    for name in names:
        add_field_flag(group, fields[name], defaults.get(name, field_default(name)))
        group._actions[-1].default = argparse.SUPPRESS


def add_refused_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("seed-code flags steptime refuses (each says why)")
    for flag, why in REFUSED.items():
        group.add_argument(flag, nargs="*", action=Refuse, help=why, metavar="ARG")


def normalize(argv: list[str]) -> list[str]:
    """llm-baselines spellings: --eval_interval=5 -> --eval-interval=5 (flag names only)."""
    out = []
    for tok in argv:
        if tok.startswith("--") and "_" in tok.split("=", 1)[0]:
            name, sep, value = tok.partition("=")
            tok = name.replace("_", "-") + sep + value
        out.append(tok)
    return out
