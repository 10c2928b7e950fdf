"""`timemodel` CLI: fit (step-time regression), fit-loss (Chinchilla approach 3), predict, search, describe.

  timemodel fit RESULTS --out tm.json
  timemodel fit-loss RUNS --out law.json
  timemodel predict tm.json --preset 124M [--batch-size 32] [--hours 1] [--loss-law law.json]
  timemodel search --time-model tm.json --loss-law law.json --hours 1 [--space default|small|SPEC]
  timemodel describe --preset 124M [--batch-size 32 --dtype bfloat16]

Bad input -> one `error: ...` line on stderr and exit code 2. Warnings (a time model fitted on another
device, features outside the fitted ranges) are one `warning: ...` line each and do not change the exit code.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from model import costs
from model.config import ConfigError, ModelConfig, get_preset
from timemodel import fit as tfit
from timemodel import losslaw
from timemodel import search as tsearch
from timemodel.io import (
    InputError,
    data_hash,
    positive_numeric,
    read_json,
    read_table,
    require_columns,
    write_json,
)

VERSION = "0.1"


def _cmd_fit(args: argparse.Namespace) -> int:
    df = read_table(args.results)
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "ok"]
    feats = args.features.split(",") if args.features else [f for f in tfit.FEATURES]
    require_columns(df, feats + [tfit.TARGET], str(args.results))
    df = positive_numeric(df, feats + [tfit.TARGET], str(args.results))
    if args.folds < 2 or len(df) < max(args.folds, len(feats) + 2):
        raise InputError(
            f"{len(df)} ok rows is too few for {args.folds}-fold CV of {len(feats)} features"
        )
    res = tfit.fit_step_time(df, feats, folds=args.folds)
    measured, held = res.pop("_measured"), res.pop("_held_out")
    first = lambda c: str(df[c].iloc[0]) if c in df.columns else None  # noqa: E731
    res |= {
        "device_name": first("device_name"),
        "dtype": first("dtype"),
        "kernels": first("kernels"),
        "n_rows": int(len(df)),
        "data_hash": data_hash(df, feats + [tfit.TARGET]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steptime_version": VERSION,
    }
    write_json(res, args.out)
    print(
        f"{'feature set':40s} {'R2':>8s} {'MAPE%':>8s} {'maxAPE%':>8s}  ({args.folds}-fold held out)"
    )
    for name, m in res["cv"].items():
        print(f"{name:40s} {m['r2']:8.4f} {m['mape']:8.2f} {m['max_ape']:8.2f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(np.array(measured) * 1e3, np.array(held) * 1e3, s=10)
        lim = [0, max(max(measured), max(held)) * 1.05e3]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("measured step ms")
        ax.set_ylabel("predicted (held out) step ms")
        fig.tight_layout()
        fig.savefig(args.plot)
        plt.close(fig)
    return 0


def _cmd_fit_loss(args: argparse.Namespace) -> int:
    df = read_table(args.runs)
    from_flops = args.tokens_from_flops is not None
    if args.tokens_from_flops:
        args.flops_col = args.tokens_from_flops
    if args.max_starts < 0:
        raise InputError(f"--max-starts must be >= 0, got {args.max_starts}")
    cols = [args.params_col, args.loss_col] + (
        [args.flops_col] if from_flops else [args.tokens_col]
    )
    require_columns(df, cols, str(args.runs))
    df = positive_numeric(df, cols, str(args.runs))
    if args.drop_highest:
        df = df.sort_values(args.loss_col).iloc[: -args.drop_highest]
    if len(df) < 6:
        raise InputError(f"{len(df)} rows is too few to fit 5 parameters")
    N = df[args.params_col].to_numpy(float)
    D = (
        df[args.flops_col].to_numpy(float) / (6 * N)
        if from_flops
        else df[args.tokens_col].to_numpy(float)
    )
    L = df[args.loss_col].to_numpy(float)
    law = losslaw.fit_chinchilla(N, D, L, max_starts=args.max_starts)
    if args.bootstrap:
        law["ci95"] = losslaw.bootstrap(
            N, D, L, args.bootstrap, max_starts=min(args.max_starts or 10, 10)
        )
        law["bootstrap_n"] = args.bootstrap
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b]
    except ValueError:
        raise InputError(f"bad --budgets {args.budgets!r}") from None
    law["compute_optimal"] = [losslaw.compute_optimal(law, c) for c in budgets]
    law |= {
        "convention": args.convention,
        "data_hash": data_hash(df, cols),
        "steptime_version": VERSION,
    }
    write_json(law, args.out)
    print(
        " ".join(f"{k}={law[k]:.4g}" for k in ("E", "A", "B", "alpha", "beta"))
        + f"  (L-BFGS-B from {law['starts']} of 4500 grid starts)"
    )
    if "ci95" in law:
        print(
            f"95% bootstrap CI ({args.bootstrap} refits): "
            + " ".join(f"{k}=[{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in law["ci95"].items())
        )
    for r in law["compute_optimal"]:
        print(
            f"C={r['C']:.3g}: N_opt={r['N_opt']:.3g} D_opt={r['D_opt']:.3g} tokens/param={r['tokens_per_param']:.1f}"
        )
    return 0


# ---------------------------------------------------------------------------------------------------------
# predict / search / describe

H100_PEAK_FLOPS = 989e12  # bf16 dense, SXM
H100_BANDWIDTH = 3.0e12  # bytes/s, HBM3 (the roofline numbers)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset", default=None, help="a model.config preset (flags below override its fields)"
    )
    for flag in (
        "--n-layer",
        "--n-embd",
        "--n-head",
        "--n-kv-head",
        "--ffn-hidden",
        "--vocab-size",
        "--sequence-length",
    ):
        p.add_argument(flag, type=int, default=None)
    p.add_argument(
        "--tie-embeddings", action="store_true", default=None, help="share wte and lm_head"
    )


def _config(args: argparse.Namespace) -> ModelConfig:
    """A preset with flag overrides, or a config from --n-layer/--n-embd/--n-head (+ optional fields)."""
    fields = {
        k: getattr(args, k)
        for k in (
            "n_layer",
            "n_embd",
            "n_head",
            "n_kv_head",
            "ffn_hidden",
            "vocab_size",
            "sequence_length",
            "tie_embeddings",
        )
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.preset is not None:
        return get_preset(args.preset).replace(**fields)
    missing = [
        f"--{k.replace('_', '-')}" for k in ("n_layer", "n_embd", "n_head") if k not in fields
    ]
    if missing:
        raise InputError(
            f"give --preset NAME or all of --n-layer, --n-embd, --n-head (missing {', '.join(missing)})"
        )
    return ModelConfig(**fields)


def _positive(name: str, v: float | None) -> None:
    if v is not None and not v > 0:
        raise InputError(f"{name} must be > 0, got {v}")


def local_device_name() -> str:
    """The GPU name via NVML when one answers, else the CPU model string from /proc/cpuinfo (no torch)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() > 0:
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
                return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or no driver: this is a CPU-only host
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _read_time_model(path: str) -> dict:
    tm = read_json(path)
    if not isinstance(tm.get("coefficients"), dict) or "intercept" not in tm:
        raise InputError(
            f"{path}: not a time model (no intercept/coefficients; make it with `timemodel fit`)"
        )
    bad = [f for f in tm["coefficients"] if f not in tfit.FEATURES]
    if bad:
        raise InputError(f"{path}: unknown feature(s) {', '.join(bad)}")
    return tm


def _read_law(path: str) -> dict:
    law = read_json(path)
    missing = [
        k for k in ("E", "A", "B", "alpha", "beta") if not isinstance(law.get(k), (int, float))
    ]
    if missing:
        raise InputError(
            f"{path}: not a loss law (missing {', '.join(missing)}; make it with `timemodel fit-loss`)"
        )
    return law


def _impl(tm: dict, cfg: ModelConfig | None = None) -> dict:
    """Traffic options matching the sweep the time model was fitted on (its dtype and kernels)."""
    impl = {
        "kernels": cfg.kernels if cfg else "torch",
        "attention": cfg.attention if cfg else "sdpa",
    }
    dtype = str(tm.get("dtype") or "").replace("torch.", "")
    if dtype in ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16"):
        impl["dtype"] = dtype
    if tm.get("kernels") in ("torch", "triton"):
        impl["kernels"] = tm["kernels"]
    return impl


def _warn_device(tm: dict, given: str | None) -> None:
    fitted = tm.get("device_name")
    if not fitted or fitted in ("None", "nan"):
        return
    here = given if given is not None else local_device_name()
    if here and here.strip() != str(fitted).strip():
        print(
            f"warning: time model was fitted on {fitted!r}, predicting for {here!r}; step times may not transfer",
            file=sys.stderr,
        )


def _outside(tm: dict, feats: dict) -> list[str]:
    """Features (scalars or arrays) outside the fitted [min, max]; for arrays, the share of values outside."""
    out = []
    for f, (lo, hi) in (tm.get("feature_ranges") or {}).items():
        if f not in feats:
            continue
        v = np.asarray(feats[f], dtype=float)
        frac = float(np.mean((v < lo) | (v > hi))) if v.size else 0.0
        if frac > 0:
            out.append(f if v.ndim == 0 else f"{f} ({frac:.0%})")
    return out


def _cmd_predict(args: argparse.Namespace) -> int:
    tm = _read_time_model(args.time_model)
    law = _read_law(args.loss_law) if args.loss_law else None
    cfg = _config(args)
    _positive("--batch-size", args.batch_size)
    _positive("--hours", args.hours)
    B, T = args.batch_size, cfg.sequence_length
    feats = {
        "params": float(costs.num_params(cfg)),
        "flops_per_step": float(costs.train_flops(cfg, B)["exact"]),
        "memory_traffic": costs.memory_traffic(cfg, B, **_impl(tm, cfg))["total"],
    }
    _warn_device(tm, args.device_name)
    ext = _outside(tm, feats)
    if ext:
        print(
            f"warning: {', '.join(ext)} outside the fitted range; the step time is extrapolated",
            file=sys.stderr,
        )
    step = float(tfit.predict_seconds(tm, feats))
    if not step > 0:
        raise InputError(f"time model predicts a non-positive step time ({step:.3g} s)")
    tps = B * T / step
    print(
        f"config: n_layer={cfg.n_layer} n_embd={cfg.n_embd} n_head={cfg.n_head} kv_heads={cfg.kv_heads} "
        f"ffn_hidden={cfg.hidden} vocab={cfg.vocab_size} T={T} batch={B}"
    )
    print(
        f"params {feats['params']:.4g}  FLOPs/step {feats['flops_per_step']:.4g}  "
        f"memory traffic/step {feats['memory_traffic']:.4g} B"
    )
    print(
        f"step time {step * 1e3:.3f} ms  tokens/s {tps:.4g}  (model fitted on {tm.get('device_name')})"
    )
    if args.hours:
        steps = int(args.hours * 3600 / step)
        tokens = steps * B * T
        print(
            f"in {args.hours:g} h: {steps} steps, {tokens:.4g} tokens ({tokens / feats['params']:.3g} tokens/param)"
        )
        if law:
            if steps == 0:
                raise InputError(f"not one step fits in {args.hours:g} h")
            pb = costs.param_breakdown(cfg)
            N = (
                pb["non_embedding"]
                if law.get("convention") == "kaplan"
                else pb["non_embedding"] + pb["embedding"]
            )
            loss = losslaw.predict_loss(law, N, tokens)
            print(
                f"predicted final loss {loss:.4f}  (L(N={N:.4g}, D={tokens:.4g}), {law.get('convention', 'porian')} N)"
            )
    elif law:
        print("(give --hours for a predicted loss: it needs the token count)")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    tm = _read_time_model(args.time_model)
    law = _read_law(args.loss_law)
    _positive("--hours", args.hours)
    _positive("--max-memory-gb", args.max_memory_gb)
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    defaults = (
        tsearch.SMALL_DEFAULTS
        if args.space == "small"
        else {"vocab_size": 50304, "sequence_length": 512}
    )
    V = args.vocab_size or defaults["vocab_size"]
    T = args.sequence_length or defaults["sequence_length"]
    _positive("--vocab-size", V)
    _positive("--sequence-length", T)
    space = tsearch.parse_space(args.space)
    t0 = time.perf_counter()
    cand = tsearch.candidates(space)
    scored = tsearch.score(
        cand,
        tm,
        law,
        hours=args.hours,
        vocab_size=V,
        sequence_length=T,
        tie=bool(args.tie_embeddings),
        max_memory_gb=args.max_memory_gb,
        impl=_impl(tm),
    )
    order = tsearch.rank(scored, args.top)
    dt = time.perf_counter() - t0
    n_grid, n_valid, n_kept = tsearch.space_size(space), len(cand["n_layer"]), len(scored["loss"])
    if n_kept == 0:
        raise InputError(
            f"none of {n_valid} valid configs fits {args.max_memory_gb:g} GB and {args.hours:g} h"
        )
    _warn_device(tm, args.device_name)
    ext = _outside(tm, {k: scored[k][order] for k in tm.get("feature_ranges", {}) if k in scored})
    if ext:
        print(
            f"warning: top configs extrapolate beyond the fitted range in {', '.join(ext)}",
            file=sys.stderr,
        )
    print(
        f"{n_grid} grid points, {n_valid} valid configs, {n_kept} within {args.max_memory_gb:g} GB and "
        f"{args.hours:g} h; scored and ranked in {dt:.2f} s (vocab {V}, T {T})"
    )
    hdr = (
        f"{'rank':>4} {'n_layer':>7} {'n_embd':>6} {'n_head':>6} {'ffn':>6} {'batch':>5} {'params':>10} "
        f"{'tokens':>10} {'tok/par':>7} {'step_ms':>9} {'mem_GB':>7} {'loss':>7}"
    )
    print(hdr)
    for r, i in enumerate(order, 1):
        print(
            f"{r:4d} {scored['n_layer'][i]:7.0f} {scored['n_embd'][i]:6.0f} {scored['n_head'][i]:6.0f} "
            f"{scored['ffn_hidden'][i]:6.0f} {scored['batch_size'][i]:5.0f} {scored['params'][i]:10.4g} "
            f"{scored['tokens'][i]:10.4g} {scored['tokens'][i] / scored['params'][i]:7.3g} "
            f"{scored['step_s'][i] * 1e3:9.3f} {scored['memory_bytes'][i] / 1e9:7.3g} {scored['loss'][i]:7.4f}"
        )
    if args.out:
        import pandas as pd

        cols = [
            "n_layer",
            "n_embd",
            "n_head",
            "ffn_hidden",
            "batch_size",
            "params",
            "law_params",
            "flops_per_step",
            "memory_traffic",
            "step_s",
            "tokens",
            "memory_bytes",
            "loss",
        ]
        df = pd.DataFrame({c: scored[c][order] for c in cols})
        for c in ("n_layer", "n_embd", "n_head", "ffn_hidden", "batch_size"):
            df[c] = df[c].astype(int)
        df.insert(0, "rank", np.arange(1, len(df) + 1))
        df.to_csv(args.out, index=False)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rng = np.random.default_rng(0)
        sub = rng.choice(n_kept, size=min(n_kept, 20000), replace=False)
        fx, fy = tsearch.frontier(scored["params"], scored["loss"])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter(
            scored["params"][sub], scored["loss"][sub], s=2, c="0.75", label="candidates (sample)"
        )
        ax.plot(fx, fy, "C0-", lw=1.5, label="best loss per size")
        best = order[0]
        ax.scatter([scored["params"][best]], [scored["loss"][best]], c="C3", zorder=3, label="best")
        ax.set_xscale("log")
        ax.set_xlabel("params")
        ax.set_ylabel(f"predicted loss after {args.hours:g} h")
        ax.set_ylim(
            fy.min() - 0.05 * (fy.max() - fy.min() + 1e-9), np.percentile(scored["loss"], 99)
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot)
        plt.close(fig)
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _positive("--batch-size", args.batch_size)
    cfg = cfg.replace(
        **{k: v for k, v in (("kernels", args.kernels), ("attention", args.attention)) if v}
    )
    B, T = args.batch_size, cfg.sequence_length
    pb = costs.param_breakdown(cfg)
    print(
        f"config: n_layer={cfg.n_layer} n_embd={cfg.n_embd} n_head={cfg.n_head} kv_heads={cfg.kv_heads} "
        f"head_dim={cfg.head_dim} ffn_hidden={cfg.hidden} vocab={cfg.vocab_size} T={T} "
        f"tied={cfg.tie_embeddings} kernels={cfg.kernels} attention={cfg.attention}"
    )
    print("params: " + "  ".join(f"{k} {v:,}" for k, v in pb.items()))
    fpt = costs.flops_per_token(cfg)
    print("FLOPs per token (train, fwd+bwd): " + "  ".join(f"{k} {v:.4g}" for k, v in fpt.items()))
    flops = costs.train_flops(cfg, B)["exact"]
    tr = costs.memory_traffic(
        cfg, B, dtype=args.dtype, kernels=cfg.kernels, attention=cfg.attention
    )
    print(
        f"memory traffic per step (batch {B}, {args.dtype} activations, fp32 params): "
        + "  ".join(f"{k} {v:.4g}" for k, v in tr.items())
        + " B"
    )
    t_flops, t_bytes = flops / H100_PEAK_FLOPS, tr["total"] / H100_BANDWIDTH
    binds = "compute (FLOPs)" if t_flops >= t_bytes else "memory bandwidth"
    print(
        f"H100 roofline floor: max({flops:.4g} FLOP / 989e12, {tr['total']:.4g} B / 3.0e12) = "
        f"max({t_flops * 1e3:.4g} ms, {t_bytes * 1e3:.4g} ms) = {max(t_flops, t_bytes) * 1e3:.4g} ms/step; "
        f"{binds} binds; arithmetic intensity {flops / tr['total']:.3g} FLOP/B (ridge {H100_PEAK_FLOPS / H100_BANDWIDTH:.0f})"
    )
    return 0


def _add_subcommands(sub) -> None:
    p = sub.add_parser("predict", help="step time, tokens/s, budget tokens and loss for one config")
    p.add_argument("time_model", help="tm.json from `timemodel fit`")
    _add_config_args(p)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument(
        "--hours", type=float, default=None, help="wall-clock budget: steps, tokens (and loss)"
    )
    p.add_argument(
        "--loss-law", default=None, help="law.json from `timemodel fit-loss` (needs --hours)"
    )
    p.add_argument(
        "--device-name", default=None, help="device predicted for (default: this host's GPU/CPU)"
    )
    p.set_defaults(func=_cmd_predict)
    s = sub.add_parser(
        "search", help="rank a grid of configs by predicted loss within a time budget"
    )
    s.add_argument("--time-model", required=True)
    s.add_argument("--loss-law", required=True)
    s.add_argument("--hours", type=float, required=True)
    s.add_argument(
        "--space",
        default="default",
        help="default (~1e6 configs), small (tiny CPU models), or e.g. "
        "'n_layer=1:24,n_embd=64:2048:64,head_dim=64,ffn_mult=2,2.667,4,batch_size=8,16' "
        "(n_head= instead of head_dim=, ffn_hidden= instead of ffn_mult=)",
    )
    s.add_argument(
        "--sequence-length", type=int, default=None, help="default 512 (64 with --space small)"
    )
    s.add_argument(
        "--vocab-size", type=int, default=None, help="default 50304 (256 with --space small)"
    )
    s.add_argument("--tie-embeddings", action="store_true")
    s.add_argument(
        "--max-memory-gb",
        type=float,
        default=80.0,
        help="limit for 16 B/param + 34 B*batch*T*d*L + 8 B*batch*T*V (see timemodel/search.py)",
    )
    s.add_argument("--top", type=int, default=20)
    s.add_argument("--plot", default=None, help="PNG: best predicted loss vs params")
    s.add_argument("--out", default=None, help="CSV of the top rows")
    s.add_argument("--device-name", default=None)
    s.set_defaults(func=_cmd_search)
    d = sub.add_parser(
        "describe", help="params, FLOPs per token, memory traffic and the H100 roofline floor"
    )
    _add_config_args(d)
    d.add_argument("--batch-size", type=int, default=1)
    d.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16", "float16"),
        help="activation dtype for the traffic count (default bfloat16, as on an H100)",
    )
    d.add_argument("--kernels", default=None, choices=("torch", "triton"))
    d.add_argument("--attention", default=None, choices=("sdpa", "flash"))
    d.set_defaults(func=_cmd_describe)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timemodel", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit step time on bench results")
    f.add_argument("results")
    f.add_argument("--out", required=True)
    f.add_argument(
        "--features", default=None, help="comma list of params,flops_per_step,memory_traffic"
    )
    f.add_argument("--folds", type=int, default=5)
    f.add_argument("--plot", default=None)
    f.set_defaults(func=_cmd_fit)
    g = sub.add_parser("fit-loss", help="Chinchilla approach 3 loss law")
    g.add_argument("runs")
    g.add_argument("--out", required=True)
    g.add_argument("--params-col", default="params")
    g.add_argument("--tokens-col", default="tokens")
    g.add_argument("--loss-col", default="loss")
    g.add_argument("--flops-col", default="Training FLOP")
    # Optional value: `--tokens-from-flops` alone uses --flops-col; `--tokens-from-flops COL` names the column.
    g.add_argument(
        "--tokens-from-flops",
        nargs="?",
        const="",
        default=None,
        metavar="COL",
        help="D = FLOP/(6N) from column COL (default: --flops-col)",
    )
    g.add_argument(
        "--drop-highest", type=int, default=0, help="drop the K highest-loss rows (Epoch: 5)"
    )
    g.add_argument("--convention", choices=("porian", "kaplan"), default="porian")
    g.add_argument("--budgets", default="1e21,5.88e23")
    g.add_argument("--bootstrap", type=int, default=0)
    g.add_argument(
        "--max-starts",
        type=int,
        default=losslaw.DEFAULT_MAX_STARTS,
        help="L-BFGS-B from the K grid starts with the lowest initial objective (0 = all 4500)",
    )
    g.set_defaults(func=_cmd_fit_loss)
    _add_subcommands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InputError, ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
