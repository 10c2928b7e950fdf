"""Reading and checking saved models: time-model JSON (`timemodel fit`) and loss-law JSON
(`timemodel fit-loss`, `replicate-chinchilla`). A file that would give NaN, infinity or nonsense is
refused with one line; a range left by more than 2x gives one warning line (printed once)."""

from __future__ import annotations

import math
import sys

import numpy as np

from core import UserError
from model import costs
from timemodel import roofline
from timemodel.io import read_json
from timemodel.losslaw import READ_EXPONENT_MAX

RANGE_FACTOR = 2.0  # warn only when a value is more than 2x outside the fitted range


def _number(v, what: str, *, lo: float = 0.0, lo_open: bool = False, hi: float = math.inf):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"{what} must be a number, got {v!r}")
    x = float(v)
    if not (math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi):
        raise UserError(
            f"{what} = {v!r} is out of range ({'>' if lo_open else '>='} {lo:g}"
            + (f", <= {hi:g})" if hi < math.inf else ")")
        )
    return x


def _ranges(obj, what: str) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise UserError(f"{what} must be an object of name: [min, max]")
    out = {}
    for k, v in obj.items():
        if not (isinstance(v, (list, tuple)) and len(v) == 2):
            raise UserError(f"{what}.{k} must be [min, max], got {v!r}")
        lo = _number(v[0], f"{what}.{k}[0]", lo=-math.inf)
        hi = _number(v[1], f"{what}.{k}[1]", lo=-math.inf)
        if lo > hi:
            raise UserError(f"{what}.{k} has min {lo:g} > max {hi:g}")
        out[k] = [lo, hi]
    return out


def read_time_model(path: str) -> dict:
    """A checked time model: intercept and coefficients finite and >= 0, known feature names."""
    tm = read_json(path)
    if "coefficients" not in tm or "intercept" not in tm:
        raise UserError(
            f"{path}: not a time model (no intercept/coefficients); make one with `timemodel fit`"
        )
    if not isinstance(tm["coefficients"], dict):
        raise UserError(f"{path}: coefficients must be an object of feature: number")
    tm["intercept"] = _number(tm["intercept"], f"{path}: intercept")
    coefs = {}
    for f, v in tm["coefficients"].items():
        if f not in costs.STEP_FEATURES:
            raise UserError(
                f"{path}: unknown feature {f!r}; known: {', '.join(costs.STEP_FEATURES)}"
            )
        coefs[f] = _number(v, f"{path}: coefficient {f}")
    tm["coefficients"] = coefs
    tm["features"] = list(coefs)
    if tm.get("form") == "roofline":
        roofline.check(tm, path)
        tm["features"] = roofline.features_of(tm)
    tm["feature_ranges"] = _ranges(tm.get("feature_ranges"), f"{path}: feature_ranges")
    return tm


def impl_of(tm: dict, dtype: str | None = None) -> dict:
    """Feature options matching the table the time model was fitted on (its dtype and kernels)."""
    out = {"dtype": dtype or str(tm.get("dtype") or "float32").replace("torch.", "")}
    if tm.get("kernels") in ("torch", "triton"):
        out["kernels"] = tm["kernels"]
    return out


def check_law(law: dict, path: str) -> dict:
    """A checked loss law: E, A, B > 0, exponents in [0, READ_EXPONENT_MAX], b_crit > 0 or
    absent."""
    missing = [k for k in ("E", "A", "B", "alpha", "beta") if k not in law]
    if missing:
        raise UserError(
            f"{path}: not a loss law (missing {', '.join(missing)}); make one with "
            "`timemodel fit-loss`"
        )
    for k in ("E", "A", "B"):
        law[k] = _number(law[k], f"{path}: {k}", lo_open=True)
    for k in ("alpha", "beta"):
        law[k] = _number(law[k], f"{path}: {k}", hi=READ_EXPONENT_MAX)
    if law.get("b_crit") is not None:
        law["b_crit"] = _number(law["b_crit"], f"{path}: b_crit", lo_open=True)
    conv = law.setdefault("convention", "porian")
    if conv not in costs.LAW_CONVENTIONS:
        raise UserError(
            f"{path}: convention {conv!r} unknown; use one of {', '.join(costs.LAW_CONVENTIONS)}"
        )
    law["fit_range"] = _ranges(law.get("fit_range"), f"{path}: fit_range")
    return law


def read_law(path: str) -> dict:
    return check_law(read_json(path), path)


def outside(ranges: dict, values: dict, factor: float = 1.0) -> list[str]:
    """Names (with the share of values, for arrays) lying outside [min/factor, max*factor]."""
    out = []
    for f, (lo, hi) in ranges.items():
        if f not in values:
            continue
        v = np.asarray(values[f], dtype=float)
        lo_f = lo / factor if lo > 0 else lo
        frac = float(np.mean((v < lo_f) | (v > hi * factor))) if v.size else 0.0
        if frac > 0:
            out.append(f if v.ndim == 0 else f"{f} ({frac:.0%})")
    return out


_WARNED: set[str] = set()


def warn_once(msg: str) -> None:
    """One `warning: ...` line on stderr, once per distinct message per process."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(f"warning: {msg}", file=sys.stderr)


def warn_law_range(law: dict, values: dict) -> None:
    """Warn once when N, D (or batch tokens) leave the law's fitted range by more than 2x."""
    ext = outside(law.get("fit_range") or {}, values, RANGE_FACTOR)
    if ext:
        rng = ", ".join(f"{k} {lo:.3g}..{hi:.3g}" for k, (lo, hi) in law["fit_range"].items())
        warn_once(
            f"loss law used more than {RANGE_FACTOR:g}x outside its fitted range in "
            f"{', '.join(ext)} (fitted on {rng}); the predicted loss is an extrapolation"
        )


def warn_time_range(tm: dict, values: dict) -> None:
    ext = outside(tm.get("feature_ranges") or {}, values)
    if ext:
        warn_once(
            f"{', '.join(ext)} outside the time model's fitted range; the step time is extrapolated"
        )


def reset_warnings() -> None:
    """Forget what was warned (each CLI invocation warns afresh)."""
    _WARNED.clear()
