"""Architecture search for a wall-clock budget: score a grid of configs with numpy, rank by predicted loss.

For every candidate (n_layer, n_embd, n_head, ffn_hidden, batch_size) at a fixed vocab and sequence length:
  params, FLOPs ("exact") and memory traffic from `model.costs.vectorized` (element-wise on arrays),
  step time from the fitted linear step-time model, tokens = hours*3600 / step_time * batch * T,
  loss = L(N, D) from the Chinchilla law (N per the law's parameter convention).
Everything is array arithmetic over the flattened grid, so ~1e6 candidates score in about a second.

Memory estimate (deliberately simple, to drop configs that cannot fit, not to predict peak use):
  16 B/param   fp32 weights + grads + AdamW m and v (4 arrays x 4 B)
  34 B * batch * T * n_embd * n_layer   stored activations per layer, the mixed-precision count of
                Korthikanti et al. 2022 (34*s*b*h per layer, flash attention so no T^2 scores)
  8 B * batch * T * vocab   fp32 logits and their gradient
"""

from __future__ import annotations

import numpy as np

from model import costs
from timemodel.fit import predict_seconds
from timemodel.losslaw import predict_loss

AXES = ("n_layer", "n_embd", "head", "ffn", "batch_size")

# "default": 64 * 64 * 4 * 6 * 10 = 983,040 grid points (the 1e6 scale); vocab/T from the CLI.
SPACES = {
    "default": "n_layer=1:64,n_embd=64:4096:64,head_dim=16,32,64,128,ffn_mult=1,1.5,2,2.667,3,4,"
    "batch_size=1,2,4,8,16,32,64,128,256,512",
    # Tiny CPU models (vocab 256, T 64) for the demo: 6 * 16 * 3 * 4 * 4 = 4,608 candidates.
    "small": "n_layer=1:6,n_embd=16:256:16,head_dim=8,16,32,ffn_mult=1,2,2.667,4,batch_size=4,8,16,32",
}
SMALL_DEFAULTS = {"vocab_size": 256, "sequence_length": 64}

_KEYS = {
    "n_layer": "n_layer",
    "n_embd": "n_embd",
    "n_head": "head",
    "head_dim": "head",
    "ffn_mult": "ffn",
    "ffn_hidden": "ffn",
    "batch_size": "batch_size",
}


def _values(key: str, text: str) -> np.ndarray:
    """`a:b` (inclusive, step 1), `a:b:s`, or a single number."""
    try:
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            lo, hi = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1.0
            if step <= 0 or hi < lo:
                raise ValueError
            return np.arange(lo, hi + step / 2, step)
        return np.array([float(text)])
    except ValueError:
        raise ValueError(f"bad --space value {key}={text!r} (use a, a:b or a:b:step)") from None


def parse_space(text: str) -> dict:
    """Parse `key=v[,v...],key=...` into axis arrays; returns {axis: values, "head_mode", "ffn_mode"}.

    Values after a comma that has no `=` belong to the previous key, so `batch_size=8,16` is a list.
    """
    text = SPACES.get(text, text)
    space: dict = {}
    key = None
    for tok in [t.strip() for t in text.split(",") if t.strip()]:
        if "=" in tok:
            key, val = (s.strip() for s in tok.split("=", 1))
            if key not in _KEYS:
                raise ValueError(f"unknown --space key {key!r}; use {', '.join(_KEYS)}")
            axis = _KEYS[key]
            if axis in space:
                raise ValueError(f"--space sets {axis} twice")
            space[axis] = [_values(key, val)]
            if axis in ("head", "ffn"):
                space[axis + "_mode"] = key
        elif key is None:
            raise ValueError(f"bad --space {text!r}: expected key=values")
        else:
            space[_KEYS[key]].append(_values(key, tok))
    for axis in AXES:
        if axis not in space:
            raise ValueError(
                f"--space needs {axis if axis not in ('head', 'ffn') else axis + ' (n_head|head_dim, ffn_hidden|ffn_mult)'}"
            )
        vals = np.unique(np.concatenate(space[axis]))
        if np.any(vals <= 0):
            raise ValueError(f"--space {axis} values must be positive")
        if axis != "ffn" or space["ffn_mode"] == "ffn_hidden":
            if np.any(vals != np.round(vals)):
                raise ValueError(f"--space {axis} values must be integers")
        space[axis] = vals
    return space


def space_size(space: dict) -> int:
    return int(np.prod([len(space[a]) for a in AXES]))


def candidates(space: dict) -> dict:
    """Meshgrid the axes, derive n_head / ffn_hidden, drop invalid configs; float64 arrays (no int overflow)."""
    L, d, h, f, b = (g.ravel() for g in np.meshgrid(*(space[a] for a in AXES), indexing="ij"))
    if space["head_mode"] == "head_dim":
        head_dim, n_head = h, d / h
    else:
        n_head, head_dim = h, d / h
    if space["ffn_mode"] == "ffn_mult":
        ffn = np.maximum(
            8.0, 8.0 * np.round(f * d / 8.0)
        )  # SwiGLU width rounded to a multiple of 8
    else:
        ffn = f
    # ModelConfig's rules: n_head divides n_embd, and the head dim is even (RoPE rotates pairs).
    ok = (
        (n_head == np.round(n_head))
        & (head_dim == np.round(head_dim))
        & (np.round(head_dim) % 2 == 0)
        & (n_head >= 1)
    )
    # ffn_mult values can round two multipliers to the same width: keep one copy of each config.
    cand = {
        "n_layer": L[ok],
        "n_embd": d[ok],
        "n_head": n_head[ok],
        "ffn_hidden": ffn[ok],
        "batch_size": b[ok],
    }
    key = np.stack(
        [cand[k] for k in ("n_layer", "n_embd", "n_head", "ffn_hidden", "batch_size")], axis=1
    )
    _, first = np.unique(key, axis=0, return_index=True)
    if len(first) < len(key):
        first.sort()
        cand = {k: v[first] for k, v in cand.items()}
    return cand


def memory_bytes(params, n_layer, n_embd, batch_size, sequence_length, vocab_size):
    """The module docstring's estimate: 16 B/param + 34 B*b*T*d*L activations + 8 B*b*T*V logits."""
    tokens = batch_size * sequence_length
    return 16.0 * params + 34.0 * tokens * n_embd * n_layer + 8.0 * tokens * vocab_size


def law_params(params, vocab_size, n_embd, tie: bool, convention: str):
    """N for the loss law: porian = non-embedding + one V*d (the head); kaplan = non-embedding only."""
    vd = vocab_size * n_embd
    nonembed = params - vd * (1 if tie else 2)
    return nonembed if convention == "kaplan" else nonembed + vd


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
    """Add params/flops/traffic/step_s/tokens/memory/loss arrays; drop configs over memory or the budget."""
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
        **(impl or {}),
    )
    feats = {
        "params": c["params"],
        "flops_per_step": c["flops"],
        "memory_traffic": c["memory_traffic"],
    }
    step = np.broadcast_to(np.asarray(predict_seconds(tm, feats), dtype=float), c["params"].shape)
    mem = memory_bytes(
        c["params"],
        cand["n_layer"],
        cand["n_embd"],
        cand["batch_size"],
        sequence_length,
        vocab_size,
    )
    budget = hours * 3600.0
    # At least one full step must fit in the budget (a time model with a zero intercept can predict ~0 s).
    ok = (step > 0) & (step <= budget)
    if max_memory_gb is not None:
        ok &= mem <= max_memory_gb * 1e9
    out = {k: v[ok] for k, v in cand.items()}
    out |= {k: np.asarray(v)[ok] for k, v in feats.items()}
    out["step_s"] = step[ok]
    out["memory_bytes"] = mem[ok]
    out["tokens"] = np.floor(budget / out["step_s"]) * out["batch_size"] * sequence_length
    N = law_params(out["params"], vocab_size, out["n_embd"], tie, law.get("convention", "porian"))
    out["law_params"] = N
    out["loss"] = predict_loss(law, N, out["tokens"])
    return out


def rank(scored: dict, top: int) -> np.ndarray:
    """Indices of the `top` lowest predicted losses, best first (argpartition: O(n), not a full sort)."""
    loss = scored["loss"]
    k = min(top, len(loss))
    if k == 0:
        return np.zeros(0, dtype=int)
    idx = np.argpartition(loss, k - 1)[:k] if k < len(loss) else np.arange(len(loss))
    return idx[np.argsort(loss[idx], kind="stable")]


def frontier(params: np.ndarray, loss: np.ndarray, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Best predicted loss per log-spaced params bin (the loss-vs-size frontier for the plot)."""
    edges = np.geomspace(params.min(), params.max() * (1 + 1e-9), bins + 1)
    which = np.clip(np.searchsorted(edges, params, side="right") - 1, 0, bins - 1)
    best = np.full(bins, np.inf)
    np.minimum.at(best, which, loss)
    centers = np.sqrt(edges[:-1] * edges[1:])
    keep = np.isfinite(best)
    return centers[keep], best[keep]
