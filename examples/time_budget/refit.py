"""Re-fit the shipped time-budget results with error bars (no training: the measured runs only).

    python examples/time_budget/refit.py        # ~3-5 min on one core; writes results/refit.json

(b') The held-out check of run.py repeated over 10 seeds: each seed holds out a random third of
     the 36 B1 configs (12), fits the time model (`timemodel fit`'s whole procedure: linear family
     and physical roofline, the one with the lower inner CV error) and the loss law (`fit-loss`:
     bounded exponents, scaled Huber delta, batch term only on a lower AIC) on the other 24, and
     predicts each held-out config's final val loss (i) from its config alone (step time ->
     tokens in B1 -> loss, as `timemodel search` does) and (ii) by the law at the measured tokens.
     Beside them, the two baselines fitted on the same 24: the mean loss, and the tokens-only law
     E + B/D^beta (at the predicted tokens for (i), the measured tokens for (ii)).
     MAE in nats: mean over seeds, [min, max] over seeds, and a 95% CI from a bootstrap over the
     360 held-out predictions (configs resampled within seeds).
(c') The law's parameters over the 10 training splits, and `fit-loss --bootstrap 200` on all 36.
(d') The B2 runs (9, shipped `verify_b2.csv`): MAE in nats of the shipped predictions beside the
     mean and tokens-only baselines (fitted on all 36 B1 runs, evaluated at the predicted tokens).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import run as tb  # noqa: E402

from core import atomic_write  # noqa: E402
from timemodel import lawfit, losslaw, roofline, stepmodel  # noqa: E402
from timemodel.table import load_step_table  # noqa: E402

RES = HERE / "results"
SEEDS = 10


def law_inputs(df: pd.DataFrame):
    n, d, loss, b, _ = lawfit.sweep_runs(df, convention="porian", loss_col="val_loss", what="b1")
    return n, d, loss, b


def fit_time_model(train: pd.DataFrame) -> dict:
    table, y = load_step_table(train, time_col="step_ms_median", time_unit="ms", what="train")
    peaks = roofline.peaks_for("AMD EPYC", "float32")
    res = stepmodel.fit_table(table, y, folds=5, cv_repeats=2, outer_seeds=1, peaks=peaks)
    res.pop("_held_out_pred", None)
    res.pop("_physical_held_out_pred", None)
    return res | {"device_name": "AMD EPYC", "dtype": "float32", "kernels": "torch"}


def one_seed(b1: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict]:
    train, test = tb.split(b1, seed)
    tm = fit_time_model(train)
    n, d, loss, b = law_inputs(train)
    law = lawfit.fit_law(n, d, loss, b) | {"convention": "porian"}
    tok = losslaw.fit_tokens_only(d, loss, delta=law["huber_delta"])
    pred = tb.predict(test, tm, law, test["budget_s"] / 60.0)
    nt, dt, lt, bt = law_inputs(test)
    out = pd.DataFrame(
        {
            "seed": seed,
            "config_id": test["config_id"].to_numpy(),
            "val_loss": lt,
            "chain": pred["pred_loss"].to_numpy(),
            "law_at_measured_tokens": losslaw.predict_loss(law, nt, dt, bt),
            "tokens_only_chain": losslaw.predict_tokens_only(tok, pred["pred_tokens"].to_numpy()),
            "tokens_only_at_measured": losslaw.predict_tokens_only(tok, dt),
            "mean": float(loss.mean()),
            "step_ape": np.abs(pred["pred_step_ms"].to_numpy() / test["step_ms_median"] - 1) * 100,
        }
    )
    info = {
        "seed": seed,
        "time_model_family": tm["family"],
        "alpha": law["alpha"],
        "beta": law["beta"],
        "E": law["E"],
        "b_crit": law.get("b_crit"),
        "exponent_at_bound": law["at_bound"],
    }
    return out, info


COLS = ("chain", "tokens_only_chain", "law_at_measured_tokens", "tokens_only_at_measured", "mean")


def summary(frame: pd.DataFrame) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for c in COLS:
        err = np.abs(frame[c] - frame["val_loss"])
        per_seed = err.groupby(frame["seed"]).mean()
        by_seed = [err[frame["seed"] == s].to_numpy() for s in sorted(frame["seed"].unique())]
        draws = [
            np.mean(np.concatenate([e[rng.integers(0, len(e), len(e))] for e in by_seed]))
            for _ in range(2000)
        ]
        out[c] = {
            "mae_nats": float(err.mean()),
            "seed_range": [float(per_seed.min()), float(per_seed.max())],
            "ci95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))],
            "mape_pct": float((err / frame["val_loss"]).mean() * 100),
        }
    return out


def b2_baselines(b1: pd.DataFrame) -> dict:
    runs = pd.read_csv(RES / "verify_b2.csv")
    n, d, loss, b = law_inputs(b1)
    law = lawfit.fit_law(n, d, loss, b)
    tok = losslaw.fit_tokens_only(d, loss, delta=law["huber_delta"])
    y = runs["val_loss"].to_numpy()
    preds = {
        "shipped prediction (law_all.json + tm_all.json)": runs["pred_loss"].to_numpy(),
        "baseline: tokens only at the predicted tokens": losslaw.predict_tokens_only(
            tok, runs["pred_tokens"].to_numpy()
        ),
        "baseline: the mean B1 loss": np.full(len(y), loss.mean()),
    }
    rng = np.random.default_rng(0)
    out = {}
    for k, p in preds.items():
        e = np.abs(p - y)
        d = [e[rng.integers(0, len(e), len(e))].mean() for _ in range(2000)]
        out[k] = {
            "mae_nats": float(e.mean()),
            "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
        }
    return out


def main() -> int:
    b1 = pd.read_csv(RES / "b1_results.csv")
    frames, infos = [], []
    for s in range(SEEDS):
        f, info = one_seed(b1, s)
        frames.append(f)
        infos.append(info)
        print(f"seed {s}: {info}", flush=True)
    frame = pd.concat(frames, ignore_index=True)
    res = {
        "seeds": SEEDS,
        "held_out_b1": summary(frame),
        "step_time_mape_pct": float(frame["step_ape"].mean()),
        "law_per_seed": infos,
        "b2": b2_baselines(b1),
    }
    for k in ("alpha", "beta"):
        v = [i[k] for i in infos]
        res[f"{k}_over_seeds"] = [float(min(v)), float(max(v))]
    atomic_write(RES / "refit.json", json.dumps(res, indent=1) + "\n")
    frame.to_csv(RES / "refit_heldout.csv", index=False)
    for c, m in res["held_out_b1"].items():
        print(
            f"{c:26s} MAE {m['mae_nats']:.4f} nats [95% CI {m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]"
            f" seeds {m['seed_range'][0]:.4f}-{m['seed_range'][1]:.4f}  MAPE {m['mape_pct']:.2f}%"
        )
    for k, m in res["b2"].items():
        print(f"B2 {k}: MAE {m['mae_nats']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]")
    print(f"alpha over seeds {res['alpha_over_seeds']}, beta {res['beta_over_seeds']}")
    print(f"wrote {RES / 'refit.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
