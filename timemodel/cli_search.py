"""`timemodel search`: rank a grid of configs by predicted loss within a wall-clock budget."""

from __future__ import annotations

import time

import numpy as np

from core import UserError
from timemodel import commands, fitted, models, plots
from timemodel import search as tsearch
from timemodel import uncertainty as unc
from timemodel.cli_args import opt
from timemodel.io import finite, hours_arg


def local_device_name() -> str:
    """The GPU name via NVML when one answers, else the CPU model from /proc/cpuinfo (no torch)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() > 0:
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
                return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or no driver: a CPU-only host
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def warn_device(tm: dict, given: str | None) -> None:
    fitted = tm.get("device_name")
    if not fitted or fitted in ("None", "nan"):
        return
    here = given if given is not None else local_device_name()
    if here and here.strip() != str(fitted).strip():
        models.warn_once(
            f"time model was fitted on {fitted!r}, predicting for {here!r}; step "
            "times may not transfer"
        )


def _bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise UserError(f"--tie-embeddings takes true or false, got {text!r}")


def _check(args) -> tuple[float, int]:
    hours = hours_arg(args.hours)
    finite("--max-memory-gb", args.max_memory_gb)
    maxc = finite("--max-candidates", args.max_candidates, hi=1e12)
    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    for name, v in (("--vocab-size", args.vocab_size), ("--sequence-length", args.sequence_length)):
        if v is not None and not 1 <= v <= 10**7:
            raise UserError(f"{name} must be in 1..1e7, got {v}")
    return hours, int(maxc)


def batch_warning(law: dict) -> None:
    if not law.get("b_crit") and tsearch.batch_cap(law) is None:
        models.warn_once(
            "the loss law has no batch term and no measured batch range, so larger "
            "batches look free; fit it with `timemodel fit-loss` on a sweep where the "
            "batch varies"
        )


def config_warnings(tm, law, *, device_name, feats: dict, N, D, batch_tokens, notes) -> None:
    """The warnings about one config, the same lines from `predict` and `search`: the device,
    the time model's and the law's fitted ranges, the law's batch term, and settings the models
    were not fitted on (`notes`)."""
    warn_device(tm, device_name)
    models.warn_time_range(tm, feats)
    if law is not None:
        vals = {"N": N, "D": D, "batch_tokens": batch_tokens}
        models.warn_law_range(law, {k: v for k, v in vals.items() if v is not None})
        batch_warning(law)
    for n in notes:
        models.warn_once(n)


def _warnings(args, tm, law, ctx, space, scored, order) -> None:
    """config_warnings for every printed row, then the space's edge."""
    for i in order:
        config_warnings(
            tm,
            law,
            device_name=args.device_name,
            feats={k: scored[k][i] for k in tm["feature_ranges"] if k in scored},
            N=scored["law_params"][i],
            D=scored["tokens"][i],
            batch_tokens=scored["batch_tokens"][i],
            notes=ctx.notes,
        )
    edge = tsearch.edges(space, scored, order[0])
    if edge:
        models.warn_once(
            f"the best config sits on the edge of the search space: {', '.join(edge)}; "
            "widen --space there"
        )


def _print(scored, order, dropped, head_note: bool, prop) -> None:
    print(
        f"{'rank':>4} {'n_layer':>7} {'n_embd':>6} {'n_head':>6} {'ffn':>6} {'batch':>5} "
        f"{'params':>10} {'tokens':>10} {'tok/par':>7} {'step_ms':>9} {'mem_GB':>7} {'loss':>7} "
        f"{'95% interval':>17} {'P(<#1)':>6}"
    )
    for r, i in enumerate(order):
        s = {k: scored[k][i] for k in scored}
        tie = "=" if prop.tied[r] and r else " "
        print(
            f"{r + 1:3d}{tie} {s['n_layer']:7.0f} {s['n_embd']:6.0f} {s['n_head']:6.0f} "
            f"{s['ffn_hidden']:6.0f} {s['batch_size']:5.0f} {s['params']:10.4g} "
            f"{s['tokens']:10.4g} {s['tokens'] / s['law_params']:7.3g} {s['step_s'] * 1e3:9.3f} "
            f"{s['memory_bytes'] / 1e9:7.3g} {s['loss']:7.4f} "
            f"[{prop.lo[r]:.4f}, {prop.hi[r]:.4f}] "
            + (f"{prop.p_beats_first[r]:6.2f}" if r else f"{'-':>6}")
        )
    print("(= : tied with #1, the 95% interval of its gap to #1 over the draws contains 0)")
    if head_note and dropped:
        print(
            f"({dropped} variants that differ only in n_head collapsed into the rows above: the "
            "head count is not a fitted factor; --keep-heads lists them)"
        )


def _write_csv(path: str, scored: dict, order: np.ndarray, prop, cmds) -> None:
    import pandas as pd

    from core import atomic_write

    cols = [
        "n_layer",
        "n_embd",
        "n_head",
        "ffn_hidden",
        "batch_size",
        "params",
        "law_params",
        "batch_tokens",
        "step_s",
        "tokens",
        "memory_bytes",
        "loss",
    ]
    df = pd.DataFrame({c: scored[c][order] for c in cols})
    for c in ("n_layer", "n_embd", "n_head", "ffn_hidden", "batch_size"):
        df[c] = df[c].astype(int)
    n = len(order)
    df["loss_lo"], df["loss_hi"] = prop.lo[:n], prop.hi[:n]
    df["p_beats_1"], df["tied_with_1"] = prop.p_beats_first[:n], prop.tied[:n]
    df["train_cmd"] = [c[0] for c in cmds]
    df["sweep_cmd"] = [c[1] for c in cmds]
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    atomic_write(path, df.to_csv(index=False))


PROPAGATED = 200  # candidates (best predicted first) whose intervals and ties are computed


def uncertainty(tm, law, scored, idx, hours: float) -> tuple:
    """(full, time-only, law-only or None, what was propagated) for candidates `idx`."""
    sigma, t_from = unc.time_error(tm)
    cols = {k: np.asarray(scored[k])[idx] for k in ("step_s", "batch_tokens", "law_params")}
    draws, l_from = unc.law_draws_for(law, cols, hours)
    kw = {"hours": hours}
    full = unc.propagate(cols, law, sigma_t=sigma, law_params=draws, **kw)
    time_only = unc.propagate(cols, law, sigma_t=sigma, law_params=None, **kw)
    law_only = unc.propagate(cols, law, sigma_t=0.0, law_params=draws, **kw) if draws else None
    what = (
        f"intervals propagate the step-time error (log-normal, sigma {sigma:.3f} from the "
        f"{t_from}) and the law's parameters ("
        + (l_from if draws else f"NOT propagated: {l_from}")
        + f"), {unc.N_DRAWS} Monte Carlo draws; not the law's misfit nor seed noise"
    )
    if draws is None:
        models.warn_once(
            f"the loss law's parameter uncertainty is not in the intervals: {l_from}; refit "
            "it with `timemodel fit-loss --bootstrap 50`"
        )
    return full, time_only, law_only, what


def search_context(tm: dict, law: dict, args) -> fitted.Context:
    """What every candidate shares: what the models were fitted on, or the flags."""
    tie = None if args.tie_embeddings is None else _bool(args.tie_embeddings)
    given = {"vocab_size": args.vocab_size, "sequence_length": args.sequence_length}
    ctx = fitted.resolve(tm, law, given | {"tie_embeddings": tie})
    m = ctx.model
    if m["dp"] != 1:
        raise UserError(
            f"the models were fitted on data-parallel runs (dp {m['dp']}); search scores one "
            "device: fit on single-device runs"
        )
    if m["n_kv_head"] is not None:
        raise UserError(
            f"the models were fitted with n_kv_head {m['n_kv_head']} (grouped-query attention); "
            "search scores multi-head attention: fit on runs without --n-kv-head"
        )
    return ctx


def search_kwargs(ctx: fitted.Context) -> dict:
    """`tsearch.run_search` keyword arguments of a context (impl, vocab, T, tie)."""
    m = ctx.model
    impl = ctx.impl | {"acc_steps": int(m["acc_steps"]), "arch": m["arch"], "bias": int(m["bias"])}
    return {
        "impl": impl,
        "vocab_size": int(m["vocab_size"]),
        "sequence_length": int(m["sequence_length"]),
        "tie": bool(m["tie_embeddings"]),
    }


def _commands(scored, order, ctx, hours: float) -> list[tuple[str, str]]:
    """(train, bench sweep) command of every printed row, printed with the notes about them."""
    minutes = hours * 60.0
    rows = [{k: scored[k][i] for k in commands.ROW_KEYS} for i in order]
    cmds = [
        (
            commands.train_command(r, ctx, minutes, out=commands.run_name(r)),
            commands.sweep_command(r, ctx, minutes, out=commands.run_name(r) + "_sweep"),
        )
        for r in rows
    ]
    print("commands that train each row as scored (train; bench sweep):")
    for r, (tr, sw) in enumerate(cmds, 1):
        print(f"{r:4d} {tr}")
        print(f"     {sw}")
    for n in ctx.command_notes:
        print(f"note: {n}")
    return cmds


def cmd_search(args) -> int:
    hours, maxc = _check(args)
    tm = models.read_time_model(args.time_model)
    law = models.read_law(args.loss_law)
    space = tsearch.parse_space(args.space, max_candidates=maxc)
    ctx = search_context(tm, law, args)
    t0 = time.perf_counter()
    cand, scored, order, dropped = tsearch.run_search(
        space, tm, law, top=args.top, dedupe_heads=not args.keep_heads, hours=hours,
        max_memory_gb=args.max_memory_gb, **search_kwargs(ctx),
    )  # fmt: skip
    dt = time.perf_counter() - t0
    n_valid, n_kept = len(cand["n_layer"]), len(scored["loss"])
    if n_kept == 0:
        raise UserError(
            f"none of {n_valid} valid configs fits {args.max_memory_gb:g} GB and "
            f"{hours:g} h (and the law's batch cap); widen --space or the budget"
        )
    cap = tsearch.batch_cap(law)
    print(
        f"{tsearch.space_size(space)} grid points, {n_valid} valid configs, {n_kept} within "
        f"{args.max_memory_gb:g} GB and {hours:g} h"
        + (f" and batch <= {cap:.4g} tokens/step (the law's measured maximum)" if cap else "")
        + f"; scored and ranked in {dt:.2f} s"
    )
    print(f"every candidate: {fitted.describe(ctx)} (what the models were fitted on)")
    idx, _ = tsearch.rank(scored, max(PROPAGATED, args.top), dedupe_heads=not args.keep_heads)
    order = idx[: len(order)]  # the same rows, best first (one ranking for the table and ties)
    full, time_only, law_only, what = uncertainty(tm, law, scored, idx, hours)
    _print(scored, order, dropped, not args.keep_heads, full)
    print(what)
    noise = unc.seed_noise(law)
    for line in unc.verdict_lines(full, time_only, law_only, shown=len(order), tm=tm, noise=noise):
        print(line)
    cmds = _commands(scored, order, ctx, hours)
    _warnings(args, tm, law, ctx, space, scored, order)
    if args.out:
        _write_csv(args.out, scored, order, full, cmds)
    if args.plot:
        fx, fy = tsearch.frontier(scored["params"], scored["loss"])
        plots.frontier_plot(args.plot, scored, order, hours, fx, fy)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser(
        "search",
        help="rank a grid of configs by predicted loss in a time budget",
        description=tsearch.__doc__,
    )
    opt(s, "--time-model", None, "TM_JSON", "from `timemodel fit`", required=True)
    opt(s, "--loss-law", None, "LAW_JSON", "from `timemodel fit-loss`", required=True)
    opt(s, "--hours", None, "H", "wall-clock budget", type=float, required=True)
    opt(
        s,
        "--space",
        "default",
        "SPEC",
        "default (~1e6 configs), small (tiny CPU models), or e.g. 'n_layer=1:24,"
        "n_embd=64:2048:64,head_dim=64,ffn_mult=2,2.667,4,batch_size=8,16' (n_head= "
        "instead of head_dim=, ffn_hidden= instead of ffn_mult=)",
    )
    opt(
        s,
        "--max-candidates",
        tsearch.MAX_CANDIDATES,
        "N",
        "refuse a --space with more grid points (checked before expanding it)",
        type=float,
    )
    opt(s, "--sequence-length", None, "T", "default: what the models were fitted on", type=int)
    opt(s, "--vocab-size", None, "V", "default: what the models were fitted on", type=int)
    opt(s, "--tie-embeddings", None, "BOOL", "share wte and lm_head (default: as fitted)")
    opt(s, "--max-memory-gb", 80.0, "GB", "memory limit of the estimate in timemodel/search.py")
    s.add_argument(
        "--keep-heads",
        action="store_true",
        help="list configs that differ only in n_head separately",
    )
    opt(s, "--top", 20, "K", "rows to print")
    opt(s, "--plot", None, "PNG", "best predicted loss vs params")
    opt(s, "--out", None, "CSV", "the top rows as CSV")
    opt(s, "--device-name", None, "NAME", "device searched for (default: this host's GPU or CPU)")
    s.set_defaults(func=cmd_search)
