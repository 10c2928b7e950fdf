"""The researcher's question, end to end: which shape gives the lowest loss in my budget here?

    python examples/researcher/run.py            # full size, ~15 min on this 2-core VM
    python examples/researcher/run.py --ci       # CI size (tests/examples/test_researcher.py)

1. `bench sweep --seeds 2`: every config of a small grid trained for budget B1 with two model
   seeds, so the loss noise between seeds is measured;
2. `timemodel fit` (step time) and `timemodel fit-loss --bootstrap K` (the law and its
   bootstrap refits) on that sweep;
3. `timemodel search` for budget B2: each row's loss with a 95% interval (the time model's
   held-out error and the law's bootstrap, propagated), the candidates tied with #1, and the
   `train` command of each row;
4. the search's top 3 and 2 random configs of the same space, each trained for B2 with its
   printed `train` command at 2 seeds (only `--seed` and `--out` change);
5. the answer: is the measured best inside the search's tied set, and the regret of the pick
   (measured loss of #1 - best measured) against the seed noise of a 2-seed mean, beside the
   regret of a random pick (the trivial baseline).

Everything goes to --out (default runs/researcher): the sweep, the models, search.txt/.csv, the
runs, results.json (every number) and RESULTS.md. The script checks nothing by itself; the test
and the README read its numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core import UserError, atomic_write, run_cli  # noqa: E402
from timemodel import commands, fitted, models  # noqa: E402
from timemodel import search as tsearch  # noqa: E402
from timemodel import uncertainty as unc  # noqa: E402
from timemodel.cli_search import search_kwargs  # noqa: E402

T, VOCAB, HEAD_DIM, FFN_MULT, LR = 64, 256, 16, 3, 3e-3
SCHEDULE = "--scheduler wsd --wsd-fract-decay 0.2 --decay-type sqrt --warmup-steps 10"
SPACE = "n_layer=1:4,n_embd=32:160:32,head_dim=16,ffn_mult=3,batch_size=4,8,16,32"
FULL = {
    "grid": [(L, d, b) for L in (1, 2, 4) for d in (32, 64, 128) for b in (8, 32)],
    "b1_minutes": 0.2,
    "b2_minutes": 0.4,
    "seeds": 2,
    "bootstrap": 50,
    "folds": 4,
    "top": 3,
    "random": 2,
}
CI = {
    # 8 runs: 6 is the least a 5-parameter law takes, and with 3 configs E is not identified.
    "grid": [(1, 32, 8), (2, 64, 8), (1, 64, 32), (2, 32, 32)],
    "b1_minutes": 0.01,
    "b2_minutes": 0.01,
    "seeds": 2,
    "bootstrap": 8,
    "folds": 2,
    "top": 3,
    "random": 2,
    "fit_flags": "--cv-repeats 1 --outer-seeds 1",
    "loss_flags": "--cv-seeds 0 --max-starts 20",
    "shards": 2,
}
ROW_KEYS = commands.ROW_KEYS


def grid_row(n_layer: int, n_embd: int, batch_size: int) -> dict:
    return {
        "vocab_size": VOCAB,
        "sequence_length": T,
        "tie_embeddings": False,
        "n_layer": n_layer,
        "n_embd": n_embd,
        "n_head": n_embd // HEAD_DIM,
        "ffn_hidden": FFN_MULT * n_embd,
        "batch_size": batch_size,
        "acc_steps": 1,
        "lr": LR,
    }


class Runner:
    """Runs the CLI steps as a user would, echoes each command and logs it to OUT/commands.txt."""

    def __init__(self, out: Path):
        self.out, self.log, self.seconds = out, [], {}

    def parallel(self, tool: str, many: list[str]) -> None:
        """Several commands at once (shards of one sweep); each must succeed."""
        if len(many) == 1:
            self(tool, many[0])
            return
        t0 = time.perf_counter()
        procs = []
        for args in many:
            self.log.append(f"{tool} {args} &")
            print(f"\n$ {tool} {args} &", flush=True)
            procs.append(
                subprocess.Popen([sys.executable, "-m", tool, *shlex.split(args)], cwd=ROOT)
            )
        codes = [p.wait() for p in procs]
        name = f"{tool} {many[0].split()[0]}"
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        atomic_write(self.out / "commands.txt", "\n".join(self.log) + "\n")
        if any(codes):
            raise UserError(f"step failed (exits {codes}): {tool} {many[0]}")

    def __call__(self, tool: str, args: str, capture: Path | None = None) -> str:
        shown = f"{tool} {args}"
        self.log.append(shown)
        print(f"\n$ {shown}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", tool, *shlex.split(args)],
            cwd=ROOT,
            capture_output=capture is not None,
            text=True,
        )
        name = " ".join(shown.split()[:2])
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        atomic_write(self.out / "commands.txt", "\n".join(self.log) + "\n")
        if capture is not None:
            atomic_write(capture, done.stdout + done.stderr)
            print(done.stdout + done.stderr, flush=True)
        if done.returncode:
            raise UserError(f"step failed (exit {done.returncode}): {shown}")
        return done.stdout if capture is not None else ""


def shards(plan: dict) -> list[str]:
    """One sweep command, or (CI) two shards of it side by side into the same folder: the CI run
    checks the pipeline, and two configs measured at once only make its step times noisier."""
    n = plan.get("shards", 1)
    return [""] if n == 1 else [f" --shard {i}/{n}" for i in range(n)]


def train_run(cmd: str, seed: int, out: Path) -> float:
    """Run a search's printed `train` command with its --seed and --out replaced, in this process
    (the same argv the `train` console script gets); its final val loss."""
    from train.cli import main as train_main

    argv = shlex.split(cmd)[1:]
    argv[argv.index("--seed") + 1] = str(seed)
    argv[argv.index("--out") + 1] = str(out)
    argv += ["--final-ckpt", "false", "--overwrite", "--no-progress"]
    print(f"\n$ train {' '.join(argv)}", flush=True)
    if train_main(argv) != 0:
        raise UserError(f"train failed: {cmd}")
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    vals = [r["val_loss"] for r in rec if "val_loss" in r]
    if not vals:
        raise UserError(f"{out}: no val_loss recorded")
    return float(vals[-1])


def candidates(tm: dict, law: dict, ctx, hours: float) -> dict:
    """Every candidate of SPACE as the search scores it (the same function, the same context)."""
    _, scored, _, _ = tsearch.run_search(
        tsearch.parse_space(SPACE), tm, law, top=1, hours=hours, **search_kwargs(ctx)
    )
    return scored


def chosen_configs(search: pd.DataFrame, scored: dict, plan: dict) -> pd.DataFrame:
    """The search's top rows and random configs of the same space (seed 1), not among them."""
    top = search.head(plan["top"]).assign(role=[f"pick {i + 1}" for i in range(plan["top"])])
    taken = set(map(tuple, top[list(ROW_KEYS)].to_numpy(int)))
    allc = pd.DataFrame({k: scored[k].astype(int) for k in ROW_KEYS})
    # One candidate per shape (the head count is not a fitted factor; the search collapses it).
    allc = allc.drop_duplicates(["n_layer", "n_embd", "ffn_hidden", "batch_size"])
    pool = [r for r in map(tuple, allc.to_numpy(int)) if r not in taken]
    rand = random.Random(1).sample(pool, plan["random"])
    rnd = pd.DataFrame(rand, columns=list(ROW_KEYS)).assign(role="random")
    return pd.concat([top[list(ROW_KEYS) + ["role", "train_cmd"]], rnd], ignore_index=True)


def score_rows(rows: pd.DataFrame, scored: dict, search: pd.DataFrame, tm, law, hours):
    """Predicted loss, its 95% interval and the tie with the search's #1 for each row, by the
    search's own propagation (paired with #1 in every draw)."""
    keys = np.stack([scored[k] for k in ROW_KEYS], axis=1).astype(int)
    where = {tuple(r): i for i, r in enumerate(keys)}
    first = tuple(search.iloc[0][list(ROW_KEYS)].astype(int))
    mine = [tuple(r) for r in rows[list(ROW_KEYS)].to_numpy()]
    others = [r for r in dict.fromkeys(mine) if r != first]
    idx = np.array([where[first]] + [where[r] for r in others])
    col = {first: 0} | {r: j + 1 for j, r in enumerate(others)}
    at = np.array([col[r] for r in mine])
    sigma, _ = unc.time_error(tm)
    cols = {k: scored[k][idx] for k in ("step_s", "batch_tokens", "law_params")}
    draws, _ = unc.law_draws_for(law, cols, hours)
    p = unc.propagate(cols, law, hours=hours, sigma_t=sigma, law_params=draws)
    return rows.assign(
        pred_loss=p.point[at], pred_lo=p.lo[at], pred_hi=p.hi[at], tied_with_1=p.tied[at]
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ci", action="store_true", help="CI size: 4 configs, a second each")
    p.add_argument("--out", default=str(ROOT / "runs" / "researcher"), help="output folder")
    a = p.parse_args(argv)
    plan = CI if a.ci else FULL
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out)
    t_start = time.perf_counter()
    res: dict = {"plan": {k: v for k, v in plan.items() if k != "grid"}, "space": SPACE}
    res["plan"]["grid"] = [list(g) for g in plan["grid"]]

    # 1. the sweep, with seeds
    grid = out / "grid.json"
    # The seed is a grid key: each config once per model seed (`--seeds K` does the same for a
    # grid given as flags; a --grid file lists its seeds itself).
    configs = [grid_row(*g) | {"seed": s} for g in plan["grid"] for s in range(plan["seeds"])]
    atomic_write(grid, json.dumps(configs, indent=1) + "\n")
    sweep = out / "sweep"
    args = f"sweep --grid {grid} --minutes {plan['b1_minutes']:g} {SCHEDULE} --no-progress"
    run.parallel("bench", [f"{args} --out {sweep}" + shard for shard in shards(plan)])
    rows = pd.read_csv(sweep / "results.csv")
    res["sweep_runs_ok"] = int((rows["status"] == "ok").sum())

    # 2. the fits
    tm_path, law_path = out / "tm.json", out / "law.json"
    run("timemodel", f"fit {sweep} --folds {plan['folds']} {plan.get('fit_flags', '')} "
        f"--out {tm_path}", capture=out / "fit.txt")  # fmt: skip
    run("timemodel", f"fit-loss {sweep} --bootstrap {plan['bootstrap']} "
        f"{plan.get('loss_flags', '')} --out {law_path}", capture=out / "fit_loss.txt")  # fmt: skip
    tm, law = models.read_time_model(str(tm_path)), models.read_law(str(law_path))

    # 3. the search
    hours = plan["b2_minutes"] / 60.0
    search_csv = out / "search.csv"
    run(
        "timemodel",
        f"search --time-model {tm_path} --loss-law {law_path} --hours {hours:.6g} "
        f"--space {SPACE} --top 10 --out {search_csv}",
        capture=out / "search.txt",
    )
    search = pd.read_csv(search_csv)
    ctx = fitted.resolve(tm, law)
    scored = candidates(tm, law, ctx, hours)

    # 4. train the picks and random configs with the printed commands, 2 seeds each
    chosen = chosen_configs(search, scored, plan)
    for i, r in chosen.iterrows():
        if not isinstance(r["train_cmd"], str):  # a random config: its command, as printed
            row = {k: int(r[k]) for k in ROW_KEYS}
            chosen.loc[i, "train_cmd"] = commands.train_command(
                row, ctx, plan["b2_minutes"], out=commands.run_name(row)
            )
    losses, t0 = [], time.perf_counter()
    for i, r in chosen.iterrows():
        per = []
        for s in range(plan["seeds"]):
            per.append(
                train_run(
                    r["train_cmd"], s, out / "runs" / f"{i}_{r['role']}_s{s}".replace(" ", "")
                )
            )
        losses.append(per)
    run.seconds["train (in process)"] = time.perf_counter() - t0
    chosen["loss_seeds"] = [json.dumps([round(x, 5) for x in v]) for v in losses]
    chosen["measured"] = [float(np.mean(v)) for v in losses]
    chosen = score_rows(chosen, scored, search, tm, law, hours)

    # 5. the answer
    sd_seed = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in losses])))
    se_diff = sd_seed * math.sqrt(2.0 / plan["seeds"])  # SE of a difference of two k-seed means
    best = int(chosen["measured"].idxmin())
    regret = float(chosen["measured"].iloc[0] - chosen["measured"].min())
    randoms = chosen[chosen["role"] == "random"]["measured"] - chosen["measured"].min()
    res |= {
        "tied_in_search": int(pd.read_csv(search_csv)["tied_with_1"].sum()),
        "best_measured_role": str(chosen.loc[best, "role"]),
        "best_measured_in_tied_set": bool(chosen.loc[best, "tied_with_1"]),
        "regret_pick1": regret,
        "regret_random_mean": float(randoms.mean()),
        "seed_sd": sd_seed,
        "se_of_a_difference": se_diff,
        "regret_in_se": regret / se_diff if se_diff > 0 else None,
        "measured_inside_interval": int(
            (
                (chosen["measured"] >= chosen["pred_lo"])
                & (chosen["measured"] <= chosen["pred_hi"])
            ).sum()
        ),
        "runs": len(chosen) * plan["seeds"],
        "wall_s": time.perf_counter() - t_start,
        "seconds_by_step": run.seconds,
    }
    cols = ["role", *ROW_KEYS, "pred_loss", "pred_lo", "pred_hi", "tied_with_1", "measured",
            "loss_seeds"]  # fmt: skip
    chosen[cols + ["train_cmd"]].to_csv(out / "trained.csv", index=False)
    atomic_write(out / "results.json", json.dumps(res, indent=1, default=float) + "\n")
    report(out, res, chosen[cols])
    print("\n" + (out / "RESULTS.md").read_text())
    return 0


def report(out: Path, res: dict, table: pd.DataFrame) -> None:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    head = " | ".join(table.columns)
    lines = [
        "# The researcher's question: results",
        "",
        f"Search tied set: {res['tied_in_search']} of its top 10 rows tied with #1. "
        f"Measured best: {res['best_measured_role']} "
        f"({'inside' if res['best_measured_in_tied_set'] else 'OUTSIDE'} the tied set).",
        f"Regret of pick 1: {res['regret_pick1']:.4f} nats = "
        + (f"{res['regret_in_se']:.2f}" if res["regret_in_se"] is not None else "n/a")
        + f" x the SE of a difference of two {res['plan']['seeds']}-seed means "
        f"({res['se_of_a_difference']:.4f}; seed SD {res['seed_sd']:.4f}); a random config's "
        f"regret (baseline): {res['regret_random_mean']:.4f} nats.",
        f"Measured means inside the predicted 95% interval: {res['measured_inside_interval']} of "
        f"{len(table)}. Wall time {res['wall_s']:.0f} s.",
        "",
        f"| {head} |",
        "| " + " | ".join("---" for _ in table.columns) + " |",
        *("| " + " | ".join(cell(v) for v in r) + " |" for r in table.itertuples(index=False)),
    ]
    atomic_write(out / "RESULTS.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(run_cli(main, None))
