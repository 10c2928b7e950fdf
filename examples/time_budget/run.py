"""The time-budget validation experiment: does steptime pick the config with the lowest loss?

One script, run from the repository root (or anywhere: paths are resolved):

    python examples/time_budget/run.py                 # full run, ~45 min on one CPU core
    python examples/time_budget/run.py --ci            # the same pipeline at CI size, ~1 min

(a) sweep: bench sweep over depth x width x batch, each config trained with warmup -> stable ->
    cooldown fitted into the wall-clock budget B1 (WSD in time, Hagele et al. 2024,
    arXiv:2405.18392).
(b) held-out check: time model (`timemodel fit`) and loss law (`timemodel fit-loss`) fitted on two
    thirds of the configs; the held-out third's final val loss predicted from its config alone
    (step time -> tokens in B1 -> L(N, D, batch)); R^2, MAPE and Spearman rank correlation.
(c) search and verify: time model and law refitted on every B1 config, `timemodel search` for a
    budget B2 != B1 over a space with unswept depths, widths and batches; its top picks and random
    configs of the space trained for B2; regret = measured loss of the pick - best measured loss.
(d) prediction accuracy at B2: predicted vs measured loss of those runs.

Everything goes to --out (default runs/time_budget): the sweeps, the fitted models, the search,
results.json (every number), RESULTS.md (tables) and two plots. A rerun resumes the sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core import UserError, atomic_write, run_cli  # noqa: E402
from model import costs  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from timemodel import fitted, models  # noqa: E402
from timemodel import search as tsearch  # noqa: E402
from timemodel.cli_search import search_kwargs  # noqa: E402

T, VOCAB, HEAD_DIM, FFN_MULT, LR = 64, 256, 16, 3, 3e-3
SPACE = "n_layer=1:6,n_embd=32:256:32,head_dim=16,ffn_mult=3,batch_size=2,4,8,16,32"
FULL = {
    "n_layer": [1, 2, 4],
    "n_embd": [32, 64, 128, 192],
    "batch_size": [2, 8, 32],
    "b1_minutes": [1 / 3],
    "b2_minutes": 2 / 3,
    "top": 3,
    "random": 5,
    "folds": 5,
}
# CI size: 4 configs at two short budgets (a loss law needs >= 6 runs to fit), 3 runs at B2.
CI = {
    "configs": [(1, 32, 2), (2, 64, 8), (1, 64, 8), (2, 32, 2)],
    "b1_minutes": [0.005, 0.01],
    "b2_minutes": 0.01,
    "top": 2,
    "random": 1,
    "folds": 3,
    "cv_repeats": 1,  # one CV split per feature set: the CI run checks the pipeline, not the fit
}
SCHEDULE = "--scheduler wsd --wsd-fract-decay 0.2 --decay-type sqrt --warmup-steps 20"


def grid_row(n_layer: int, n_embd: int, batch_size: int) -> dict:
    return {
        "vocab_size": VOCAB,
        "sequence_length": T,
        "n_layer": int(n_layer),
        "n_embd": int(n_embd),
        "n_head": int(n_embd) // HEAD_DIM,
        "ffn_hidden": FFN_MULT * int(n_embd),
        "batch_size": int(batch_size),
        "lr": LR,
    }


def b1_grid(plan: dict) -> list[dict]:
    if "configs" in plan:
        return [grid_row(*c) for c in plan["configs"]]
    return [
        grid_row(L, d, b)
        for L in plan["n_layer"]
        for d in plan["n_embd"]
        for b in plan["batch_size"]
    ]


class Runner:
    """Runs the CLI steps as subprocesses, echoes each command, logs it to OUT/commands.txt."""

    def __init__(self, out: Path, cores: str | None):
        self.out, self.cores, self.log = out, cores, []

    def __call__(self, tool: str, args: str) -> None:
        shown = f"{tool} {args}"
        self.log.append(shown)
        print(f"\n$ {shown}", flush=True)
        cmd = [sys.executable, "-m", tool, *shlex.split(args)]
        done = subprocess.run(cmd, cwd=ROOT)
        atomic_write(self.out / "commands.txt", "\n".join(self.log) + "\n")
        if done.returncode:
            raise UserError(f"step failed (exit {done.returncode}): {shown}")

    def sweep(self, grid: list[dict], minutes: float, folder: Path) -> pd.DataFrame:
        gfile = folder.with_suffix(".grid.json")
        atomic_write(gfile, json.dumps(grid, indent=1) + "\n")
        pin = f" --cpu-cores {self.cores}" if self.cores else ""
        self(
            "bench",
            f"sweep --minutes {minutes:g} --grid {gfile} {SCHEDULE}{pin} --no-progress "
            f"--out {folder}",
        )
        df = pd.read_csv(folder / "results.csv")
        df = df[df["status"] == "ok"].copy()
        if df.empty:
            raise UserError(f"{folder}: no config finished; see its results.csv")
        return df


def split(df: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two thirds of the configs to fit on, one third held out (every run of a config together)."""
    ids = sorted(df["config_id"].unique())
    random.Random(seed).shuffle(ids)
    held = set(ids[: max(1, len(ids) // 3)])
    test = df["config_id"].isin(held)
    return df[~test], df[test]


def predict(rows: pd.DataFrame, tm: dict, law: dict, minutes) -> pd.DataFrame:
    """Predicted step time, tokens and final loss of each row's config for its budget, with the
    same arithmetic and the same settings as `timemodel search` (`timemodel.search.score` with
    `cli_search.search_kwargs`: the vocab, T, acc_steps and kernels the models were fitted on)."""
    ctx = fitted.resolve(tm, law, {"vocab_size": VOCAB, "sequence_length": T})
    kw = search_kwargs(ctx)
    cand = {
        k: rows[k].to_numpy(dtype=float)
        for k in ("n_layer", "n_embd", "n_head", "ffn_hidden", "batch_size")
    }
    hours = np.asarray(minutes, dtype=float) / 60.0
    out = []
    for i in range(len(rows)):
        one = {k: v[i : i + 1] for k, v in cand.items()}
        h = float(hours if hours.ndim == 0 else hours[i])
        s = tsearch.score(one, tm, law, hours=h, **kw)
        if len(s["loss"]) == 0:
            raise UserError(f"config {one} was dropped by the search's filters")
        out.append({"pred_step_ms": s["step_s"][0] * 1e3, "pred_tokens": s["tokens"][0]})
        out[-1]["pred_loss"] = float(s["loss"][0])
    return pd.DataFrame(out, index=rows.index)


def scores(measured, predicted) -> dict:
    y, p = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    ape = np.abs(p - y) / y
    ss_res, ss_tot = float(np.sum((y - p) ** 2)), float(np.sum((y - y.mean()) ** 2))
    spearman = pd.Series(y).corr(pd.Series(p), method="spearman") if len(y) > 2 else math.nan
    return {
        "n": int(len(y)),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "mape_pct": 100.0 * float(ape.mean()),
        "worst_ape_pct": 100.0 * float(ape.max()),
        "spearman": float(spearman),
        "mean_abs_err": float(np.mean(np.abs(p - y))),
    }


def law_only(rows: pd.DataFrame, law: dict) -> np.ndarray:
    """The law's loss at the measured tokens (isolates the law's error from the time model's)."""
    from timemodel.losslaw import predict_loss

    n = [costs.law_params(config_of(r), law["convention"]) for _, r in rows.iterrows()]
    b = rows["batch_size"].to_numpy(dtype=float) * T
    return np.asarray(predict_loss(law, np.asarray(n, float), rows["tokens_seen"].to_numpy(), b))


def config_of(r) -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB,
        sequence_length=T,
        n_layer=int(r["n_layer"]),
        n_embd=int(r["n_embd"]),
        n_head=int(r["n_head"]),
        ffn_hidden=int(r["ffn_hidden"]),
    )


def fit_pair(run: Runner, tables: list[str], tag: str, folds: int, cv: int) -> tuple[dict, dict]:
    out = run.out
    tm, law = out / f"tm_{tag}.json", out / f"law_{tag}.json"
    run("timemodel", f"fit {' '.join(tables)} --folds {folds} --cv-repeats {cv} --out {tm}")
    run("timemodel", f"fit-loss {' '.join(tables)} --out {law}")
    return models.read_time_model(str(tm)), models.read_law(str(law))


def held_out_check(run: Runner, b1: pd.DataFrame, plan: dict) -> tuple[dict, pd.DataFrame]:
    """(b): fit on two thirds of the B1 configs, predict the held-out third."""
    train, test = split(b1)
    tables = []
    for name, part in (("b1_train", train), ("b1_test", test)):
        atomic_write(run.out / f"{name}.csv", part.to_csv(index=False))
        tables.append(str(run.out / f"{name}.csv"))
    folds = min(plan["folds"], train["config_id"].nunique())
    tm, law = fit_pair(run, tables[:1], "train", folds, plan.get("cv_repeats", 5))
    test = test.join(predict(test, tm, law, test["budget_s"] / 60.0))
    res = scores(test["val_loss"], test["pred_loss"])
    res["law_at_measured_tokens"] = scores(test["val_loss"], law_only(test, law))
    res["step_time"] = scores(test["step_ms_median"], test["pred_step_ms"])
    res["n_train_configs"] = int(train["config_id"].nunique())
    res["n_test_configs"] = int(test["config_id"].nunique())
    res["law"] = {k: law.get(k) for k in ("E", "A", "B", "alpha", "beta", "b_crit", "batch_term")}
    return res, test


def search_picks(run: Runner, tables: list[str], plan: dict) -> tuple[pd.DataFrame, dict]:
    """(c): refit on every B1 run, search for B2, and draw random configs of the same space."""
    out, hours = run.out, plan["b2_minutes"] / 60.0
    tm, law = fit_pair(run, tables, "all", plan["folds"], plan.get("cv_repeats", 5))
    common = f"--hours {hours:.6g} --space {SPACE} --sequence-length {T} --vocab-size {VOCAB}"
    run(
        "timemodel",
        f"search --time-model {out / 'tm_all.json'} --loss-law {out / 'law_all.json'} {common} "
        f"--top {plan['top']} --out {out / 'search.csv'} --plot {out / 'search.png'}",
    )
    picks = pd.read_csv(out / "search.csv").head(plan["top"])
    # The same search with a law that has no batch term: what the batch term changes.
    nob = out / "law_all_nobatch.json"
    run("timemodel", f"fit-loss {' '.join(tables)} --no-batch-term --out {nob}")
    run(
        "timemodel",
        f"search --time-model {out / 'tm_all.json'} --loss-law {nob} {common} --top 1 "
        f"--out {out / 'search_nobatch.csv'}",
    )
    space = tsearch.parse_space(SPACE)
    kw = search_kwargs(fitted.resolve(tm, law, {"vocab_size": VOCAB, "sequence_length": T}))
    _, scored, _, _ = tsearch.run_search(space, tm, law, top=1, hours=hours, **kw)
    allc = pd.DataFrame({k: scored[k] for k in ("n_layer", "n_embd", "n_head", "ffn_hidden")})
    allc["batch_size"] = scored["batch_size"]
    key = ["n_layer", "n_embd", "ffn_hidden", "batch_size"]
    taken = set(map(tuple, picks[key].to_numpy(dtype=float)))
    pool = [i for i, r in enumerate(allc[key].to_numpy(dtype=float)) if tuple(r) not in taken]
    rand = allc.iloc[sorted(random.Random(1).sample(pool, plan["random"]))].astype(int)
    before = pd.read_csv(out / "search_nobatch.csv").head(1)
    parts = [
        picks[key + ["n_head"]].assign(role=[f"pick {i + 1}" for i in range(len(picks))]),
        rand[key + ["n_head"]].assign(role="random"),
    ]
    trained = taken | set(map(tuple, rand[key].to_numpy(dtype=float)))
    if tuple(before[key].to_numpy(dtype=float)[0]) not in trained:
        # Also train the pick of the law without the batch term: does the term pay?
        parts.append(before[key + ["n_head"]].assign(role="pick without batch term"))
    chosen = pd.concat(parts, ignore_index=True)
    info = {
        "space": SPACE,
        "n_candidates": int(len(allc)),
        "law": {k: law.get(k) for k in ("E", "A", "B", "alpha", "beta", "b_crit", "batch_term")},
        "pick_with_batch_term": picks.head(1)[key + ["loss"]].to_dict("records")[0],
        "pick_without_batch_term": before[key + ["loss"]].to_dict("records")[0],
    }
    return chosen, info


def verify(run: Runner, chosen: pd.DataFrame, plan: dict) -> tuple[dict, pd.DataFrame]:
    """(c, d): train the picks and the random configs for B2 (and the pick of the law without the
    batch term); regret and prediction error over all of them."""
    tm = models.read_time_model(str(run.out / "tm_all.json"))
    law = models.read_law(str(run.out / "law_all.json"))
    grid = [grid_row(r.n_layer, r.n_embd, r.batch_size) for r in chosen.itertuples()]
    for g, r in zip(grid, chosen.itertuples()):
        g["n_head"], g["ffn_hidden"] = int(r.n_head), int(r.ffn_hidden)
    b2 = run.sweep(grid, plan["b2_minutes"], run.out / "b2")
    key = ["n_layer", "n_embd", "n_head", "ffn_hidden", "batch_size"]
    runs = chosen.merge(b2, on=key, how="left")
    if runs["val_loss"].isna().any():
        raise UserError("some B2 configs did not finish; rerun to resume the sweep")
    runs = runs.join(predict(runs, tm, law, plan["b2_minutes"]))
    best = runs["val_loss"].min()
    picks = runs[runs["role"].str.fullmatch(r"pick \d+")]
    nob = runs[runs["role"] == "pick without batch term"]
    res = {
        "b2_minutes": plan["b2_minutes"],
        "best_measured_loss": float(best),
        "best_measured_role": str(runs.loc[runs["val_loss"].idxmin(), "role"]),
        "pick1_measured_loss": float(picks["val_loss"].iloc[0]),
        "regret_pick1": float(picks["val_loss"].iloc[0] - best),
        "regret_best_of_picks": float(picks["val_loss"].min() - best),
        # The no-batch-term law's pick, when it differs from every run above (else null).
        "regret_pick_without_batch_term": float(nob["val_loss"].iloc[0] - best)
        if len(nob)
        else None,
        "prediction": scores(runs["val_loss"], runs["pred_loss"]),
        "step_time": scores(runs["step_ms_median"], runs["pred_step_ms"]),
    }
    return res, runs


def scatter(path: Path, frame: pd.DataFrame, res: dict, title: str, color_by: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for name, g in frame.groupby(color_by):
        ax.scatter(g["val_loss"], g["pred_loss"], label=f"{color_by} {name}", s=28, zorder=3)
    lo = min(frame["val_loss"].min(), frame["pred_loss"].min()) - 0.03
    hi = max(frame["val_loss"].max(), frame["pred_loss"].max()) + 0.03
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="exact")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured val loss (nats/token)")
    ax.set_ylabel("predicted val loss")
    ax.set_title(
        f"{title}\nR$^2$ {res['r2']:.3f}  MAPE {res['mape_pct']:.2f}%  "
        f"Spearman {res['spearman']:.3f}  n={res['n']}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(df: pd.DataFrame) -> list[str]:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [" | ".join(map(str, df.columns))] + [" | ".join(map(cell, r)) for r in df.to_numpy()]
    rows.insert(1, " | ".join("---" for _ in df.columns))
    return [f"| {r} |" for r in rows]


def report(out: Path, res: dict, test: pd.DataFrame, runs: pd.DataFrame) -> None:
    cols = ["n_layer", "n_embd", "batch_size", "step_ms_median", "pred_step_ms", "tokens_seen"]
    cols += ["pred_tokens", "val_loss", "pred_loss"]
    (out / "heldout_b1.csv").write_text(test[["config_id", *cols]].to_csv(index=False))
    (out / "verify_b2.csv").write_text(runs[["role", *cols]].to_csv(index=False))
    atomic_write(out / "results.json", json.dumps(res, indent=1, default=float) + "\n")
    b, v = res["heldout_b1"], res["verify_b2"]
    lines = [
        "# Time-budget validation: results",
        "",
        f"(b) held-out B1 configs ({b['n_test_configs']} of "
        f"{b['n_test_configs'] + b['n_train_configs']}): final val loss R2 {b['r2']:.3f}, "
        f"MAPE {b['mape_pct']:.2f}%, Spearman {b['spearman']:.3f}; the law alone at the measured "
        f"tokens R2 {b['law_at_measured_tokens']['r2']:.3f}; step time MAPE "
        f"{b['step_time']['mape_pct']:.1f}%.",
        f"(c) regret at B2 = {v['b2_minutes']:g} min: search's pick {v['regret_pick1']:+.4f} "
        f"nats, best of its picks {v['regret_best_of_picks']:+.4f} (best measured: "
        f"{v['best_measured_role']}, {v['best_measured_loss']:.4f})"
        + (
            f"; the no-batch-term law's pick {v['regret_pick_without_batch_term']:+.4f}."
            if v["regret_pick_without_batch_term"] is not None
            else "; the no-batch-term law picks one of the runs above."
        ),
        f"(d) predicted vs measured at B2: R2 {v['prediction']['r2']:.3f}, MAPE "
        f"{v['prediction']['mape_pct']:.2f}%, Spearman {v['prediction']['spearman']:.3f}.",
        "",
        *markdown(runs[["role", *cols]]),
    ]
    atomic_write(out / "RESULTS.md", "\n".join(lines) + "\n")
    scatter(out / "heldout_b1.png", test, b, "(b) held-out configs at B1", "batch_size")
    scatter(out / "verify_b2.png", runs, v["prediction"], "(d) search picks + random at B2", "role")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ci", action="store_true", help="CI size: 4 configs, seconds each")
    p.add_argument("--out", default=str(ROOT / "runs" / "time_budget"), help="output folder")
    p.add_argument("--cpu-cores", default=None, help="pin the sweeps' workers (bench --cpu-cores)")
    a = p.parse_args(argv)
    plan = CI if a.ci else FULL
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out, a.cpu_cores)
    b1 = pd.concat(
        [run.sweep(b1_grid(plan), m, out / f"b1_{i}") for i, m in enumerate(plan["b1_minutes"])],
        ignore_index=True,
    )
    atomic_write(out / "b1_all.csv", b1.to_csv(index=False))
    res = {"plan": {k: v for k, v in plan.items()}, "b1_runs": int(len(b1))}
    res["heldout_b1"], test = held_out_check(run, b1, plan)
    chosen, res["search"] = search_picks(run, [str(out / "b1_all.csv")], plan)
    res["verify_b2"], runs = verify(run, chosen, plan)
    report(out, res, test, runs)
    print("\n" + (out / "RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, None))
