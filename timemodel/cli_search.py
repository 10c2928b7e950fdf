"""`timemodel search`: rank a grid of configs by predicted loss within a wall-clock budget."""

from __future__ import annotations

import time

import numpy as np

from core import UserError
from timemodel import models, plots
from timemodel import search as tsearch
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


def _check(args) -> tuple[float, int, int, int]:
    hours = hours_arg(args.hours)
    finite("--max-memory-gb", args.max_memory_gb)
    maxc = finite("--max-candidates", args.max_candidates, hi=1e12)
    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    defaults = tsearch.SMALL_DEFAULTS if args.space == "small" else tsearch.LARGE_DEFAULTS
    V = args.vocab_size or defaults["vocab_size"]
    T = args.sequence_length or defaults["sequence_length"]
    for name, v in (("--vocab-size", V), ("--sequence-length", T)):
        if not 1 <= v <= 10**7:
            raise UserError(f"{name} must be in 1..1e7, got {v}")
    return hours, int(maxc), V, T


def _warnings(args, tm, law, space, scored, order, dropped) -> None:
    warn_device(tm, args.device_name)
    top = {k: scored[k][order] for k in tm["feature_ranges"] if k in scored}
    models.warn_time_range(tm, top)
    best = order[0]
    models.warn_law_range(
        law,
        {
            "N": scored["law_params"][best],
            "D": scored["tokens"][best],
            "batch_tokens": scored["batch_tokens"][best],
        },
    )
    edge = tsearch.edges(space, scored, best)
    if edge:
        models.warn_once(
            f"the best config sits on the edge of the search space: {', '.join(edge)}; "
            "widen --space there"
        )
    if not law.get("b_crit") and tsearch.batch_cap(law) is None:
        models.warn_once(
            "the loss law has no batch term and no measured batch range, so larger "
            "batches look free; fit it with `timemodel fit-loss` on a sweep where the "
            "batch varies"
        )


def _print(scored, order, dropped, head_note: bool) -> None:
    print(
        f"{'rank':>4} {'n_layer':>7} {'n_embd':>6} {'n_head':>6} {'ffn':>6} {'batch':>5} "
        f"{'params':>10} {'tokens':>10} {'tok/par':>7} {'step_ms':>9} {'mem_GB':>7} {'loss':>7}"
    )
    for r, i in enumerate(order, 1):
        s = {k: scored[k][i] for k in scored}
        print(
            f"{r:4d} {s['n_layer']:7.0f} {s['n_embd']:6.0f} {s['n_head']:6.0f} "
            f"{s['ffn_hidden']:6.0f} {s['batch_size']:5.0f} {s['params']:10.4g} "
            f"{s['tokens']:10.4g} {s['tokens'] / s['law_params']:7.3g} {s['step_s'] * 1e3:9.3f} "
            f"{s['memory_bytes'] / 1e9:7.3g} {s['loss']:7.4f}"
        )
    if head_note and dropped:
        print(
            f"({dropped} variants that differ only in n_head collapsed into the rows above: the "
            "head count is not a fitted factor; --keep-heads lists them)"
        )


def _write_csv(path: str, scored: dict, order: np.ndarray) -> None:
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
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    atomic_write(path, df.to_csv(index=False))


def cmd_search(args) -> int:
    hours, maxc, V, T = _check(args)
    tm = models.read_time_model(args.time_model)
    law = models.read_law(args.loss_law)
    space = tsearch.parse_space(args.space, max_candidates=maxc)
    t0 = time.perf_counter()
    cand, scored, order, dropped = tsearch.run_search(
        space,
        tm,
        law,
        top=args.top,
        dedupe_heads=not args.keep_heads,
        hours=hours,
        vocab_size=V,
        sequence_length=T,
        tie=bool(args.tie_embeddings),
        max_memory_gb=args.max_memory_gb,
    )
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
        + f"; scored and ranked in {dt:.2f} s (vocab {V}, T {T})"
    )
    _print(scored, order, dropped, not args.keep_heads)
    _warnings(args, tm, law, space, scored, order, dropped)
    if args.out:
        _write_csv(args.out, scored, order)
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
    opt(s, "--sequence-length", None, "T", "default 512 (64 with --space small)", type=int)
    opt(s, "--vocab-size", None, "V", "default 50304 (256 with --space small)", type=int)
    s.add_argument("--tie-embeddings", action="store_true", help="share wte and lm_head")
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
