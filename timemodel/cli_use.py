"""Handlers of the commands that use fitted models: predict, search, describe."""

from __future__ import annotations

import math

from core import UserError
from model import costs
from model.config import ModelConfig, get_preset
from timemodel import cli_search, fitted, models
from timemodel.cli_args import opt
from timemodel.fit import predict_seconds
from timemodel.io import finite, hours_arg
from timemodel.losslaw import predict_loss
from timemodel.models import impl_of

CONFIG_FIELDS = (
    "n_layer",
    "n_embd",
    "n_head",
    "n_kv_head",
    "ffn_hidden",
    "vocab_size",
    "sequence_length",
)
# H100 SXM5 HBM3 bandwidth, NVIDIA H100 Tensor Core GPU datasheet (3.35 TB/s).
H100_BANDWIDTH = 3.35e12


def add_config_args(p) -> None:
    opt(p, "--preset", None, "NAME", "a model.config preset (the flags below override its fields)")
    for f in CONFIG_FIELDS:
        p.add_argument(
            f"--{f.replace('_', '-')}",
            type=int,
            default=None,
            metavar="N",
            help=f"ModelConfig.{f} (default: the preset's)",
        )
    p.add_argument("--arch", default=None, choices=("llama", "gpt2"), help="model family")
    p.add_argument("--bias", action="store_true", default=None, help="biases on linears (gpt2)")
    p.add_argument(
        "--tie-embeddings", action="store_true", default=None, help="share wte and lm_head"
    )


def config_from(args) -> ModelConfig:
    """A preset with flag overrides, or a config from --n-layer/--n-embd/--n-head (+ the rest)."""
    fields = {k: getattr(args, k) for k in CONFIG_FIELDS + ("arch", "bias", "tie_embeddings")}
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.preset is not None:
        return get_preset(args.preset).replace(**fields)
    missing = [
        f"--{k.replace('_', '-')}" for k in ("n_layer", "n_embd", "n_head") if k not in fields
    ]
    if missing:
        raise UserError(
            f"give --preset NAME or all of --n-layer, --n-embd, --n-head (missing "
            f"{', '.join(missing)})"
        )
    return ModelConfig(**fields)


def count(name: str, v: int) -> int:
    if not 1 <= v <= 10**9:
        raise UserError(f"{name} must be an integer in 1..1e9, got {v}")
    return v


def _context(tm: dict, law: dict | None, cfg: ModelConfig, args) -> fitted.Context:
    """What the models were fitted on, against this config: its notes are the warnings search
    gives for the same config (every field the search holds fixed is given here)."""
    given = {
        "vocab_size": cfg.vocab_size,
        "sequence_length": cfg.sequence_length,
        "tie_embeddings": cfg.tie_embeddings,
        "arch": cfg.arch,
        "bias": cfg.bias,
        "n_kv_head": cfg.n_kv_head,
        "acc_steps": args.acc_steps,
        "dp": args.dp,
        "activation_checkpointing": bool(args.activation_checkpointing),
    }
    return fitted.resolve(tm, law, config=given)


def cmd_predict(args) -> int:
    tm = models.read_time_model(args.time_model)
    law = models.read_law(args.loss_law) if args.loss_law else None
    cfg = config_from(args)
    hours = hours_arg(args.hours) if args.hours is not None else None
    B, acc, dp = (
        count(f"--{n}", getattr(args, n.replace("-", "_")))
        for n in ("batch-size", "acc-steps", "dp")
    )
    impl = impl_of(tm, args.dtype)
    feats = costs.step_features(
        cfg,
        B,
        acc_steps=acc,
        dp=dp,
        dtype=impl["dtype"],
        kernels=impl.get("kernels", cfg.kernels),
        activation_checkpointing=args.activation_checkpointing,
    )
    ctx = _context(tm, law, cfg, args)
    step = float(predict_seconds(tm, feats))
    if not (step >= 1e-9 and math.isfinite(step)):
        raise UserError(f"{args.time_model}: predicts a step time of {step:.3g} s; refit it")
    per_step = B * acc * dp * cfg.sequence_length
    print(
        f"config: arch={cfg.arch} n_layer={cfg.n_layer} n_embd={cfg.n_embd} n_head={cfg.n_head} "
        f"kv_heads={cfg.kv_heads} ffn_hidden={cfg.hidden} vocab={cfg.vocab_size} "
        f"T={cfg.sequence_length} batch={B} acc_steps={acc} dp={dp}"
    )
    print("features: " + "  ".join(f"{k} {feats[k]:.4g}" for k in tm["features"]))
    device = tm.get("device_name")
    print(
        f"step time {step * 1e3:.3f} ms  tokens/s {per_step / step:.4g}"
        + (f"  (model fitted on {device})" if device and device not in ("None", "nan") else "")
    )
    N = costs.law_params(cfg, law["convention"]) if law else costs.num_params(cfg)
    steps = math.floor(hours * 3600 / step) if hours is not None else None
    tokens = steps * per_step if steps is not None else None
    cli_search.config_warnings(
        tm,
        law,
        device_name=args.device_name,
        feats=feats,
        N=N,
        D=tokens if tokens else None,
        batch_tokens=per_step,
        notes=ctx.notes,
    )
    if hours is None:
        if law:
            print("(give --hours for a predicted loss: it needs the token count)")
        return 0
    print(f"in {hours:g} h: {steps} steps, {tokens:.4g} tokens ({tokens / N:.3g} tokens/param)")
    if law:
        if steps == 0:
            raise UserError(f"not one step fits in {hours:g} h")
        loss = predict_loss(law, N, tokens, per_step)
        print(
            f"predicted final loss {loss:.4f}  (L(N={N:.4g}, D={tokens:.4g}), "
            f"{law['convention']} N)"
        )
        one = {"step_s": [step], "batch_tokens": [per_step], "law_params": [N]}
        full, _, _, what = cli_search.uncertainty(tm, law, one, [0], hours)
        print(f"95% interval [{full.lo[0]:.4f}, {full.hi[0]:.4f}]: {what}")
    return 0


def cmd_describe(args) -> int:
    cfg = config_from(args)
    B = count("--batch-size", args.batch_size)
    cfg = cfg.replace(
        **{k: v for k, v in (("kernels", args.kernels), ("attention", args.attention)) if v}
    )
    pb = costs.param_breakdown(cfg)
    print(
        f"config: arch={cfg.arch} n_layer={cfg.n_layer} n_embd={cfg.n_embd} n_head={cfg.n_head} "
        f"kv_heads={cfg.kv_heads} head_dim={cfg.head_dim} ffn_hidden={cfg.hidden} "
        f"vocab={cfg.vocab_size} T={cfg.sequence_length} tied={cfg.tie_embeddings} "
        f"kernels={cfg.kernels} attention={cfg.attention}"
    )
    print("params: " + "  ".join(f"{k} {v:,}" for k, v in pb.items()))
    fpt = costs.flops_per_token(cfg)
    print("FLOPs per token (train, fwd+bwd): " + "  ".join(f"{k} {v:.4g}" for k, v in fpt.items()))
    f = costs.step_features(cfg, B, dtype=args.dtype, kernels=cfg.kernels)
    print(
        f"per step (batch {B}, {args.dtype}): "
        + "  ".join(f"{k} {f[k]:.4g}" for k in costs.STEP_FEATURES)
    )
    if args.peak_flops is not None and not (math.isfinite(args.peak_flops) and args.peak_flops > 0):
        raise UserError(f"--peak-flops must be a finite number > 0, got {args.peak_flops}")
    peak = args.peak_flops or costs.peak_flops(args.device_name, args.dtype)
    if not peak:
        raise UserError(
            f"no peak FLOP/s known for {args.device_name!r} in {args.dtype}; give --peak-flops"
        )
    bw = finite("--bandwidth", args.bandwidth)
    t_f, t_b = f["flops"] / peak, f["bytes"] / bw
    binds = "compute (FLOPs)" if t_f >= t_b else "memory bandwidth"
    print(
        f"{args.device_name} roofline floor: max({f['flops']:.4g} FLOP / {peak:.4g}, "
        f"{f['bytes']:.4g} B / {bw:.4g}) = max({t_f * 1e3:.4g} ms, {t_b * 1e3:.4g} ms) = "
        f"{max(t_f, t_b) * 1e3:.4g} ms/step; {binds} binds; arithmetic intensity "
        f"{f['flops'] / f['bytes']:.3g} FLOP/B (ridge {peak / bw:.0f})"
    )
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="step time, tokens/s, budget tokens and loss for one config")
    p.add_argument("time_model", metavar="TM_JSON", help="time model from `timemodel fit`")
    add_config_args(p)
    opt(p, "--batch-size", 1, "B", "micro-batch per device")
    opt(p, "--acc-steps", 1, "K", "gradient accumulation")
    opt(p, "--dp", 1, "N", "data-parallel degree")
    opt(p, "--dtype", None, "DTYPE", "activation dtype (default: the time model's)")
    p.add_argument(
        "--activation-checkpointing", action="store_true", help="count the recompute forward"
    )
    opt(
        p,
        "--hours",
        None,
        "H",
        "wall-clock budget: steps, tokens (and loss with --loss-law)",
        type=float,
    )
    opt(p, "--loss-law", None, "LAW_JSON", "law from `timemodel fit-loss` (needs --hours)")
    opt(p, "--device-name", None, "NAME", "device predicted for (default: this host's GPU or CPU)")
    p.set_defaults(func=cmd_predict)
    cli_search.add_parser(sub)
    d = sub.add_parser("describe", help="params, FLOPs, step features and a GPU roofline floor")
    add_config_args(d)
    opt(d, "--batch-size", 1, "B", "micro-batch")
    d.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16", "float16"),
        help="activation dtype of the traffic count",
    )
    d.add_argument(
        "--kernels",
        default=None,
        metavar="KERNELS",
        help="kernel set: torch, triton (all ours) or ops of ours joined by '+' (rmsnorm, swiglu, "
        "linear_ce)",
    )
    d.add_argument("--attention", default=None, choices=("sdpa", "flash"), help="attention")
    opt(d, "--device-name", "H100", "NAME", "GPU whose peak (costs.peak_flops) the roofline uses")
    opt(d, "--peak-flops", None, "FLOPS", "peak FLOP/s instead of costs.peak_flops", type=float)
    opt(
        d,
        "--bandwidth",
        H100_BANDWIDTH,
        "BPS",
        "memory bandwidth in B/s (default: H100 SXM5 HBM3 datasheet)",
        type=float,
    )
    d.set_defaults(func=cmd_describe)
