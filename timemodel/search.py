"""Architecture search for a wall-clock budget: score a grid of configs with numpy, rank by loss.

For every candidate (n_layer, n_embd, n_head, ffn_hidden, batch_size), everything else (vocab,
sequence length, tied embeddings, family, accumulation, dtype, kernels) held at what the models
were fitted on (`timemodel.fitted`): the step-time features from `model.costs.vectorized`
(element-wise on arrays, the same numbers as `costs.step_features`), the step time from the
fitted time model, tokens = budget / step time * batch * T, and loss = L(N, D[, batch]) from the
loss law with N by the law's convention (`costs.law_params`). Everything is array arithmetic over
the flattened grid, so ~1e6 candidates score in about a second. The grid size is computed from
the --space text before anything is expanded, and refused above `max_candidates`.

Batch. A law with a critical-batch term (`losslaw.effective_tokens`) charges large batches their
lost token efficiency. A law fitted on a sweep where the batch varied but no penalty fitted caps the
batch at the largest tokens per step it measured; a law with no batch information at all leaves the
batch free, and the CLI warns that the largest batch then always wins.

Memory estimate (deliberately simple, to drop configs that cannot fit, not to predict peak use):
  16 B/param   fp32 weights + grads + AdamW m and v (4 arrays x 4 B)
  34 B * batch * T * n_embd * n_layer   stored activations per layer (Korthikanti et al. 2022,
                arXiv:2205.05198, §4.1: 34*s*b*h per layer with flash attention, no T^2 scores)
  8 B * batch * T * vocab   fp32 logits and their gradient
"""

from __future__ import annotations

import math

import numpy as np

from core import UserError
from model import costs
from timemodel import models
from timemodel.fit import predict_seconds
from timemodel.losslaw import predict_loss

AXES = ("n_layer", "n_embd", "head", "ffn", "batch_size")
MAX_CANDIDATES = 10_000_000

# "default": 64 * 64 * 4 * 6 * 10 = 983,040 grid points.
SPACES = {
    "default": "n_layer=1:64,n_embd=64:4096:64,head_dim=16,32,64,128,ffn_mult=1,1.5,2,2.667,3,4,"
    "batch_size=1,2,4,8,16,32,64,128,256,512",
    # Tiny CPU models for the demo: 6 * 16 * 3 * 4 * 4 = 4,608 candidates.
    "small": "n_layer=1:6,n_embd=16:256:16,head_dim=8,16,32,ffn_mult=1,2,2.667,4,"
    "batch_size=4,8,16,32",
}

_KEYS = {
    "n_layer": "n_layer",
    "n_embd": "n_embd",
    "n_head": "head",
    "head_dim": "head",
    "ffn_mult": "ffn",
    "ffn_hidden": "ffn",
    "batch_size": "batch_size",
}


def _range(key: str, text: str, max_count: int) -> np.ndarray:
    """`a:b` (inclusive, step 1), `a:b:s`, or one number; its length checked before expanding."""
    bad = UserError(f"bad --space value {key}={text!r} (use a, a:b or a:b:step, finite numbers)")
    try:
        parts = [float(x) for x in text.split(":")]
    except ValueError:
        raise bad from None
    if len(parts) not in (1, 2, 3) or not all(math.isfinite(p) for p in parts):
        raise bad
    if len(parts) == 1:
        return np.array(parts)
    lo, hi, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1.0
    if step <= 0 or hi < lo:
        raise bad
    count = math.floor((hi - lo) / step + 1e-9) + 1
    if count > max_count:
        raise UserError(
            f"--space {key}={text} alone has {count:.3g} values, over --max-candidates "
            f"{max_count:.3g}; narrow the range or raise --max-candidates"
        )
    return lo + step * np.arange(count)


def parse_space(text: str, max_candidates: int = MAX_CANDIDATES) -> dict:
    """`key=v[,v...],key=...` -> {axis: values, "head_mode", "ffn_mode"}; the grid size is checked
    against `max_candidates` before any grid is built. Values after a comma without `=` belong to
    the previous key, so `batch_size=8,16` is a list."""
    text = SPACES.get(text, text)
    space: dict = {}
    key = None
    for tok in [t.strip() for t in text.split(",") if t.strip()]:
        if "=" in tok:
            key, val = (s.strip() for s in tok.split("=", 1))
            if key not in _KEYS:
                raise UserError(f"unknown --space key {key!r}; use {', '.join(_KEYS)}")
            axis = _KEYS[key]
            if axis in space:
                raise UserError(f"--space sets {axis} twice")
            space[axis] = [_range(key, val, max_candidates)]
            if axis in ("head", "ffn"):
                space[axis + "_mode"] = key
        elif key is None:
            raise UserError(f"bad --space {text!r}: expected key=values")
        else:
            space[_KEYS[key]].append(_range(key, tok, max_candidates))
    for axis in AXES:
        if axis not in space:
            what = {"head": "n_head or head_dim", "ffn": "ffn_hidden or ffn_mult"}.get(axis, axis)
            raise UserError(f"--space needs {what}")
        vals = np.unique(np.concatenate(space[axis]))
        if np.any(vals <= 0):
            raise UserError(f"--space {axis} values must be positive")
        if (axis != "ffn" or space["ffn_mode"] == "ffn_hidden") and np.any(vals != np.round(vals)):
            raise UserError(f"--space {axis} values must be integers")
        space[axis] = vals
    size = space_size(space)
    if size > max_candidates:
        raise UserError(
            f"--space has {size:.3g} grid points, over --max-candidates {max_candidates:.3g}; "
            "narrow it or raise --max-candidates"
        )
    return space


def space_size(space: dict) -> int:
    return math.prod(len(space[a]) for a in AXES)


def _width_pairs(space: dict) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (n_embd, ffn_hidden) pairs. An ffn_mult gives the SwiGLU width rounded to a
    multiple of 8 (at least 8); two multipliers that round alike give one pair, not a duplicate."""
    ds, fs = [], []
    for d in space["n_embd"]:
        f = space["ffn"]
        widths = (
            np.unique(np.maximum(8.0, 8.0 * np.round(f * d / 8.0)))
            if space["ffn_mode"] == "ffn_mult"
            else f
        )
        ds.append(np.full(len(widths), d))
        fs.append(widths)
    return np.concatenate(ds), np.concatenate(fs)


def candidates(space: dict) -> dict:
    """Meshgrid the axes, derive n_head / ffn_hidden, drop invalid configs (float64 arrays)."""
    pd_, pf = _width_pairs(space)
    grids = np.meshgrid(
        space["n_layer"], np.arange(len(pd_)), space["head"], space["batch_size"], indexing="ij"
    )
    L, p, h, b = (g.ravel() for g in grids)
    d, ffn = pd_[p], pf[p]
    if space["head_mode"] == "head_dim":
        head_dim, n_head = h, d / h
    else:
        n_head, head_dim = h, d / h
    # ModelConfig's rules: n_head divides n_embd, and the head dim is even (RoPE rotates pairs).
    ok = (
        (n_head == np.round(n_head))
        & (head_dim == np.round(head_dim))
        & (np.round(head_dim) % 2 == 0)
        & (n_head >= 1)
    )
    cols = ("n_layer", "n_embd", "n_head", "ffn_hidden", "batch_size")
    return dict(zip(cols, (L[ok], d[ok], n_head[ok], ffn[ok], b[ok])))


def memory_bytes(params, n_layer, n_embd, batch_size, sequence_length, vocab_size):
    """The module docstring's estimate: 16 B/param + 34 B*b*T*d*L activations + 8 B*b*T*V logits."""
    tokens = batch_size * sequence_length
    return 16.0 * params + 34.0 * tokens * n_embd * n_layer + 8.0 * tokens * vocab_size


def batch_cap(law: dict) -> float | None:
    """Largest tokens per step a law without a fitted penalty may use (its measured maximum)."""
    rng = (law.get("fit_range") or {}).get("batch_tokens")
    return None if law.get("b_crit") or not rng else float(rng[1])


def features(
    cand: dict, *, vocab_size: int, sequence_length: int, tie: bool, impl: dict, convention: str
) -> dict:
    """`costs.STEP_FEATURES` arrays and the law's N ("law_params") of every candidate, from
    `costs.vectorized` (the same numbers as `costs.step_features` and `costs.law_params`)."""
    c = costs.vectorized(
        vocab_size,
        cand["n_layer"],
        cand["n_embd"],
        cand["n_head"],
        cand["n_head"],
        cand["ffn_hidden"],
        sequence_length,
        cand["batch_size"],
        int(tie),
        **impl,
    )
    shape = np.shape(cand["n_layer"])
    out = {k: np.broadcast_to(np.asarray(c[k], dtype=float), shape) for k in costs.STEP_FEATURES}
    out["law_params"] = np.broadcast_to(np.asarray(c[f"law_{convention}"], dtype=float), shape)
    return out


def score(
    cand: dict,
    tm: dict,
    law: dict,
    *,
    hours: float,
    vocab_size: int,
    sequence_length: int,
    tie: bool = False,
    max_memory_gb: float | None = None,
    impl: dict | None = None,
) -> dict:
    """Add features, step_s, tokens, memory and loss arrays; drop configs over the memory limit,
    over the budget (not one step fits), or over the batch cap of a law without a batch term."""
    feats = features(
        cand,
        vocab_size=vocab_size,
        sequence_length=sequence_length,
        tie=tie,
        impl=impl or {},
        convention=law["convention"],
    )
    params = feats["params"]
    step = np.broadcast_to(np.asarray(predict_seconds(tm, feats), dtype=float), params.shape)
    mem = memory_bytes(
        params, cand["n_layer"], cand["n_embd"], cand["batch_size"], sequence_length, vocab_size
    )
    budget = hours * 3600.0
    batch_tokens = cand["batch_size"] * sequence_length * (impl or {}).get("acc_steps", 1)
    ok = (step > 0) & (step <= budget)
    if max_memory_gb is not None:
        ok &= mem <= max_memory_gb * 1e9
    cap = batch_cap(law)
    if cap is not None:
        ok &= batch_tokens <= cap * (1 + 1e-9)
    out = {k: v[ok] for k, v in cand.items()}
    out |= {k: v[ok] for k, v in feats.items()}
    out["step_s"] = step[ok]
    out["memory_bytes"] = mem[ok]
    out["batch_tokens"] = batch_tokens[ok]
    out["tokens"] = np.floor(budget / out["step_s"]) * out["batch_tokens"]
    out["loss"] = predict_loss(law, out["law_params"], out["tokens"], out["batch_tokens"])
    return out


def rank(scored: dict, top: int, dedupe_heads: bool = True) -> tuple[np.ndarray, int]:
    """Indices of the `top` lowest predicted losses, best first, and how many head-only variants
    were collapsed. Shapes that differ only in n_head are one entry (the best of them) unless
    dedupe_heads is False: neither the loss law nor the time model's features depend on the head
    count beyond a few bytes, so ranking its variants separately only repeats a config."""
    loss = scored["loss"]
    if len(loss) == 0:
        return np.zeros(0, dtype=int), 0
    if not dedupe_heads:
        k = min(top, len(loss))
        idx = np.argpartition(loss, k - 1)[:k] if k < len(loss) else np.arange(len(loss))
        return idx[np.argsort(loss[idx], kind="stable")], 0
    order = np.argsort(loss, kind="stable")
    seen, keep, dropped = set(), [], 0
    cols = [scored[c] for c in ("n_layer", "n_embd", "ffn_hidden", "batch_size")]
    for i in order:
        key = tuple(float(c[i]) for c in cols)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        keep.append(i)
        if len(keep) == top:
            break
    return np.array(keep, dtype=int), dropped


def edges(space: dict, scored: dict, i: int) -> list[str]:
    """Axes on which candidate i sits at the smallest or largest value of the space (the head
    count is left out: it is not a fitted factor)."""
    out = []
    for axis, col in (
        ("n_layer", "n_layer"),
        ("n_embd", "n_embd"),
        ("batch_size", "batch_size"),
        ("ffn", "ffn_hidden"),
    ):
        vals = space[axis]
        if len(vals) < 2:
            continue
        v, lo, hi = scored[col][i], vals.min(), vals.max()
        if axis == "ffn" and space["ffn_mode"] == "ffn_mult":  # compare widths, as rounded
            d = scored["n_embd"][i]
            lo, hi = (max(8.0, 8.0 * np.round(m * d / 8.0)) for m in (lo, hi))
        at = "smallest" if v <= lo else "largest" if v >= hi else None
        if at:
            out.append(f"{col}={v:g} ({at} in the space)")
    return out


def frontier(params: np.ndarray, loss: np.ndarray, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Best predicted loss per log-spaced params bin (the loss-vs-size frontier for the plot)."""
    edges_ = np.geomspace(params.min(), params.max() * (1 + 1e-9), bins + 1)
    which = np.clip(np.searchsorted(edges_, params, side="right") - 1, 0, bins - 1)
    best = np.full(bins, np.inf)
    np.minimum.at(best, which, loss)
    centers = np.sqrt(edges_[:-1] * edges_[1:])
    keep = np.isfinite(best)
    return centers[keep], best[keep]


def run_search(
    space: dict, tm: dict, law: dict, *, top: int, dedupe_heads: bool = True, impl=None, **kw
):
    """Candidates of `space`, scored (`score`'s keyword arguments in kw; impl: the keyword
    arguments of `costs.vectorized`, default the time model's dtype and kernels) and ranked:
    (candidates, scored, order, dropped). What `timemodel search` times."""
    cand = candidates(space)
    scored = score(cand, tm, law, impl=impl or models.impl_of(tm), **kw)
    order, dropped = rank(scored, top, dedupe_heads=dedupe_heads)
    return cand, scored, order, dropped
