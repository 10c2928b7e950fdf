"""Exact parameter, FLOP and memory-traffic accounting for model.transformer.Transformer.

Standard library only (no torch, no numpy) so that timemodel can import it. Every formula is written
once, in ``_terms``, as plain arithmetic that also works element-wise on numpy arrays; the scalar API
(``num_params``, ``train_flops``, ``memory_traffic``) and ``vectorized`` both call it.

Notation: V vocab, L layers, d n_embd, H heads, G kv heads, hd = d/H, kvd = G*hd, f SwiGLU hidden
width, T sequence length, B batch (sequences), N = B*T tokens per step.

FLOP conventions (per training step; ``flops_per_token`` divides by N):
  exact      2*m*n*k for every matmul of forward + backward, as torch.utils.flop_counter counts it:
             linears fwd 2*N*in*out, bwd twice that (grad input + grad weight; every linear needs a grad
             input because the embedding output requires grad); attention fwd 4*B*H*T^2*hd (QK^T and PV),
             bwd twice that. Causal masking is NOT discounted: the counter (and the math kernel) charge the
             full T x T score matrix, so we do too. The embedding lookup is a gather (0 FLOPs); the
             norm/SwiGLU/RoPE/softmax element-wise work is not counted (the counter ignores it).
  kaplan     6 * N_nonembedding * tokens, N_nonembedding = params without wte and lm_head (norms kept).
  porian     6 * (N_nonembedding + V*d) * tokens: includes one V*d (the head), spec/seeds.md §2.2.
  chinchilla 3 * F_fwd per sequence * B with F_fwd from Hoffmann App. F (spec/seeds.md §1.9), with k = hd,
             h = H, SwiGLU dense term, and the k/v projections sized by G (GQA).
  palm       (6*N_params + 12*L*H*hd*T) * tokens: the PaLM / nanoGPT MFU count; used by ``mfu``.
"""

from __future__ import annotations

from model.config import ModelConfig

# bf16 dense tensor-core peaks (FLOP/s). Matched by substring against the device name, most specific first.
PEAK_FLOPS: dict[str, float] = {
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM / HBM3
    "H200": 989e12,
    "A100": 312e12,
}

_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "float64": 8}

FLOP_KEYS = ("exact", "kaplan", "porian", "chinchilla", "palm")
TRAFFIC_KEYS = (
    "matmul",
    "norm",
    "activation",
    "attention",
    "embedding_head",
    "optimizer",
    "other",
    "total",
)


def _nbytes(dtype: str) -> int:
    try:
        return _BYTES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(_BYTES)}") from None


def _terms(
    V,
    L,
    d,
    H,
    G,
    f,
    T,
    B,
    tie,
    *,
    dtype="float32",
    param_dtype="float32",
    kernels="torch",
    attention="sdpa",
    optimizer="fused_adamw",
    average=None,
) -> dict:
    """All counts for one config. Works on ints or numpy arrays (pure arithmetic, no branching on values)."""
    hd = d // H
    kvd = G * hd
    N = B * T
    gqa = (G < H) * 1  # 0/1; a comparison, not an `if`, so arrays work
    # ---- parameters -------------------------------------------------------------------------
    layer = (
        d * (d + 2 * kvd) + d * d + 3 * d * f + 2 * d
    )  # c_attn, c_proj, w1, w2, mlp.c_proj, two norms
    embed = V * d
    head = V * d * (1 - tie)  # a tied head shares wte's matrix
    params = L * layer + embed + head + d  # + final norm
    nonembed = L * layer + d
    n_tensors = L * 7 + 2 + (1 - tie)  # parameter tensors (scalar per-tensor optimizer work)
    # ---- FLOPs ------------------------------------------------------------------------------
    lin_fwd = 2 * N * (L * (d * (d + 2 * kvd) + d * d + 3 * d * f) + d * V)
    att_fwd = 4 * B * H * T * T * hd * L
    flops = {
        "exact": 3 * (lin_fwd + att_fwd),
        "kaplan": 6 * nonembed * N,
        "porian": 6 * (nonembed + V * d) * N,
        "chinchilla": 3
        * B
        * (
            2 * T * V * d
            + L
            * (
                2 * T * d * (d + 2 * kvd)
                + 2 * T * T * d
                + 3 * H * T * T
                + 2 * T * T * d
                + 2 * T * d * d
                + 2 * T * 3 * d * f
            )
            + 2 * T * d * V
        ),
        "palm": (6 * params + 12 * L * H * hd * T) * N,
    }
    # ---- memory traffic (bytes) ---------------------------------------------------------------
    s = _nbytes(dtype)  # activation bytes
    p = _nbytes(param_dtype)
    # Every matmul reads both operands and writes its result; a linear does 3 (fwd, grad input, grad weight).
    lin = lambda i, o: 3 * (N * i + N * o + i * o)  # noqa: E731  (tiny local helper)
    matmul = s * (L * (lin(d, d + 2 * kvd) + lin(d, d) + 2 * lin(d, f) + lin(f, d)) + lin(d, V))
    # Loss: log_softmax fwd (2NV) + bwd (3NV), nll fwd (NV) + bwd (2NV); fp32 logits as the model upcasts.
    loss = 8 * N * V * 4 + s * N * V * (s != 4) * 2
    emb = (
        p * 2 * V * d + 2 * s * N * d + 2 * 8 * N + 3 * p * V * d * tie
    )  # gather reads all of wte (as counted)
    if kernels == "triton":
        # Fused RMSNorm: fwd reads x, w, writes y, rstd; bwd reads x, dy, w, rstd, writes dx (+ dw partials).
        norm = (2 * L + 1) * (5 * s * N * d + 8 * N)
        # Fused SwiGLU: fwd reads gate, up, writes h; bwd reads gate, up, dh, writes dgate, dup.
        act = L * 8 * s * N * f
        rope = (
            L * s * (6 * N * d + 6 * N * kvd)
        )  # eager RoPE: read/write q,k fwd and bwd (fp32 math in regs)
        resid = L * 2 * 3 * s * N * d * 2  # residual adds fwd and grad accumulation bwd
        elementwise_other = rope + resid
    else:
        # Eager torch path, fp32: per-op byte counts of the reference ops (pow, mean, rsqrt, mul, silu, ...),
        # collected from the aten op sequence of one step and expressed per element class.
        # The coefficients below were obtained by regressing measured per-class bytes on these element
        # classes over 60 random tiny configs (they reproduce measure_traffic within ~0.3%); the N*d class
        # also carries the RoPE and residual-add traffic, which scale the same way.
        norm = s * (L * 84 * N * d + 32 * N * d - 25.5 * N + L * 45.5 * N + L * 8 * d)
        act = s * L * (5 * N * f + 9 * N * f)  # silu fwd/bwd + swiglu mul and grad-accumulation
        elementwise_other = s * (
            L * 47.5 * N * kvd + L * 1.5 * T * hd + gqa * L * (24 * N * d - 12 * N * kvd) + 346
        )
    if attention == "flash" or kernels == "triton":
        # Flash: reads q, k, v, writes o, lse; bwd reads q, k, v, o, do, lse, writes dq, dk, dv.
        # Omitted: re-reads of K/V tiles across query blocks (served from L2/SRAM when they fit).
        att = L * (s * (5 * N * d + 4 * N * kvd) + 8 * B * H * T)
    else:
        # Fused SDPA after an explicit GQA repeat: fwd q,k,v,o (4Nd) + lse; bwd 8Nd + lse.
        att = L * (s * 12 * N * d + 8 * B * H * T)
    # Optimizer (fp32 states): fused AdamW reads p, g, m, v (+avg) and writes p, m, v (+avg).
    avg = 0 if average is None else 2
    if optimizer == "fused_adamw":
        opt = params * 4 * (7 + avg)
    elif optimizer == "torch_adamw":
        # torch.optim.AdamW(foreach=False): mul_, lerp_, mul_, addcmul_, sqrt, div, add_, addcdiv_ = 20 per element
        opt = params * 4 * (20 + avg) + n_tensors * 8
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose fused_adamw or torch_adamw")
    # Mixed precision: the autocast weight casts (read p, write s) each step when dtypes differ.
    other = (p != s) * params * (p + s)
    traffic = {
        "matmul": matmul,
        "norm": norm,
        "activation": act,
        "attention": att,
        "embedding_head": emb + loss,
        "optimizer": opt,
        "other": other + elementwise_other,
    }
    traffic["total"] = sum(traffic[k] for k in TRAFFIC_KEYS[:-1])
    return {
        "params": params,
        "nonembed": nonembed,
        "embed": embed,
        "head": head,
        "flops": flops,
        "traffic": traffic,
    }


def _cfg_terms(cfg: ModelConfig, batch_size: int, **impl) -> dict:
    return _terms(
        cfg.vocab_size,
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
        cfg.kv_heads,
        cfg.hidden,
        cfg.sequence_length,
        batch_size,
        int(cfg.tie_embeddings),
        **impl,
    )


def num_params(cfg: ModelConfig) -> int:
    """Unique trainable parameters (tied wte/lm_head counted once), == sum(p.numel()) of the model."""
    return int(_cfg_terms(cfg, 1)["params"])


def param_breakdown(cfg: ModelConfig) -> dict:
    t = _cfg_terms(cfg, 1)
    return {
        "total": t["params"],
        "non_embedding": t["nonembed"],
        "embedding": t["embed"],
        "lm_head": t["head"],
        "per_layer": (t["nonembed"] - cfg.n_embd) // cfg.n_layer,
        "final_norm": cfg.n_embd,
    }


def train_flops(cfg: ModelConfig, batch_size: int) -> dict:
    """FLOPs of one training step (forward + backward) of batch_size sequences, per convention."""
    return dict(_cfg_terms(cfg, batch_size)["flops"])


def flops_per_token(cfg: ModelConfig) -> dict:
    return {k: v / cfg.sequence_length for k, v in train_flops(cfg, 1).items()}


def memory_traffic(
    cfg: ModelConfig,
    batch_size: int,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    kernels: str | None = None,
    attention: str | None = None,
    optimizer: str = "fused_adamw",
    average: str | None = None,
) -> dict:
    """Bytes read + written in device memory by one training step, by op class.

    kernels/attention default to cfg's. Counted like model.traffic.measure_traffic: each op reads its
    inputs and writes its outputs in full. Left out: view/reshape/transpose ops (no data moves), the
    integer index/target tensors beyond one read, scalar bookkeeping (loss scalar, step counters
    other than per-tensor AdamW steps), gradient zeroing (set_to_none), data loading and host copies,
    and cache effects (a fused kernel's reuse of K/V tiles is not charged twice).
    """
    t = _cfg_terms(
        cfg,
        batch_size,
        dtype=dtype,
        param_dtype=param_dtype,
        kernels=kernels or cfg.kernels,
        attention=attention or cfg.attention,
        optimizer=optimizer,
        average=average,
    )
    return {k: float(v) for k, v in t["traffic"].items()}


def mfu(tokens_per_second: float, cfg: ModelConfig, device_name: str | None) -> float | None:
    """Model FLOPs utilisation with the "palm" count against the bf16 dense peak; None if unknown/CPU."""
    if not device_name:
        return None
    for key, peak in PEAK_FLOPS.items():
        parts = key.split()
        if all(part.lower() in device_name.lower() for part in parts):
            return tokens_per_second * flops_per_token(cfg)["palm"] / peak
    return None


def vectorized(
    vocab_size,
    n_layer,
    n_embd,
    n_head,
    n_kv_head,
    ffn_hidden,
    sequence_length,
    batch_size,
    tie_embeddings=0,
    **impl,
) -> dict:
    """params, exact FLOPs and total traffic for arrays of configs (numpy arrays or scalars)."""
    t = _terms(
        vocab_size,
        n_layer,
        n_embd,
        n_head,
        n_kv_head,
        ffn_hidden,
        sequence_length,
        batch_size,
        tie_embeddings * 1,
        **impl,
    )
    return {
        "params": t["params"],
        "flops": t["flops"]["exact"],
        "memory_traffic": t["traffic"]["total"],
    }
