"""A physically bounded step-time model: a roofline per op class, fitted efficiencies in (0, 1].

    step_s = t0 + sum_k max(F_k / (eff_f,k * peak_flops) [+ S / (eff_s * peak_flops)],
                            B_k / (eff_b,k * bandwidth))
                + launches * t_launch + allreduce_bytes / (eff_link * link_bandwidth)

The roofline of Williams, Waterman & Patterson 2009 ("Roofline: an insightful visual performance
model", CACM 52(4)) applied op class by op class: each class of kernels is either compute-bound or
memory-bound, whichever takes longer, and the classes run one after another (eager execution, no
overlap between kernels). Inbar & Sernau 2024 ("Time Matters", arXiv:2406.18922) regress step
time on FLOPs and memory copies linearly; a linear regression is free to buy its in-range fit with
rates no device has (a matmul rate above the GPU's peak), which then fail outside the fitted range.
Here every rate is a fraction of a stated peak, so no fitted coefficient can leave physics.

Op classes (features of `model.costs.step_features`):
  matmul       FLOPs `matmul_flops`, bytes `bytes_matmul`
  attention    FLOPs `other_flops` (QK^T, PV) plus the per-score work `attention_scores`
               (scale, mask, exp, sum: charged at >= 1 FLOP per score at peak), bytes
               `bytes_attention`
  elementwise  bytes of norms, activations, casts, residual adds and embedding/head/loss
  optimizer    bytes of the optimizer step
Launches cost t_launch each (>= 0, no peak: the host's per-op dispatch), t0 >= 0 is a fixed cost
per step, and the gradient all-reduce moves `allreduce_bytes` over the device link.

Fit: least squares of the relative error (pred - y) / y over log-rates bounded below by the peaks
(so efficiency = achieved rate / peak <= 1 by construction), scipy's trust-region reflective
solver with the analytic Jacobian of the hard max, from several starts; the best is kept.

Peaks: `PEAKS` below (GPU datasheets; the CPU row is the machine examples/cpu_sweep was measured
on), or --peak-flops / --peak-bandwidth / --link-bandwidth. An efficiency that ends at 1 sits on
its bound: the data asked for a faster device than the peak says, and the report flags it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import least_squares

from core import UserError
from model import costs

# Device-memory bandwidth (B/s, datasheet) and link bandwidth per direction (B/s) used by the
# gradient all-reduce; matched by substring of the device name, most specific first. FLOP/s peaks
# come from model.costs.PEAK_FLOPS (dense tensor-core, per dtype).
# NVIDIA datasheets: A100 40GB 1,555 GB/s, 80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s; NVLink 3
# 600 GB/s total (300 per direction); H100 SXM 3.35 TB/s, PCIe 2.0 TB/s, NVL 3.9 TB/s, NVLink 4
# 900 GB/s total (450 per direction); H200 4.8 TB/s; GH200 up to 4.9 TB/s (HBM3e); L4 300 GB/s.
# PCIe cards: PCIe 4 x16 32 GB/s (A100, L4), PCIe 5 x16 64 GB/s (H100 PCIe) per direction.
GPU_MEMORY = (
    ("GH200", 4.9e12, 450e9),
    ("H200", 4.8e12, 450e9),
    ("H100 PCIe", 2.0e12, 64e9),
    ("H100 NVL", 3.9e12, 300e9),
    ("H100", 3.35e12, 450e9),
    ("A100 40GB PCIe", 1.555e12, 32e9),
    ("A100 PCIe 40GB", 1.555e12, 32e9),
    ("A100 80GB PCIe", 1.935e12, 32e9),
    ("A100 PCIe", 1.935e12, 32e9),
    ("A100 40GB", 1.555e12, 300e9),
    ("A100", 2.039e12, 300e9),
    ("L4", 300e9, 32e9),
)
# One core of the AMD EPYC VM that measured examples/cpu_sweep (Zen 4: family 25 model 17,
# avx512_bf16 in /proc/cpuinfo). FLOP/s: 2 FMA pipes x 8 fp32 lanes x 2 FLOP = 32 FLOP per
# cycle at the EPYC 9004 series' 3.7 GHz maximum boost = 118.4 GFLOP/s per core (an upper bound:
# the VM reports a 2.6 GHz nominal clock). Bandwidth: the best single-core copy rate of a 1 MiB
# (L2-resident) numpy buffer measured on that VM, 90.9 GB/s read + write (a 256 MiB buffer, DRAM:
# 27.0 GB/s); the sweep's tensors are mostly cache-resident, so the cache rate is the ceiling.
CPU_PEAKS = {"AMD EPYC": {"flops": 118.4e9, "bandwidth": 90.9e9, "link": None}}

CLASSES = (
    ("matmul", "matmul_flops", None, ("bytes_matmul",)),
    ("attention", "other_flops", "attention_scores", ("bytes_attention",)),
    (
        "elementwise",
        None,
        None,
        ("bytes_norm", "bytes_activation", "bytes_cast", "bytes_other", "bytes_embedding_head"),
    ),
    ("optimizer", None, None, ("bytes_optimizer",)),
)
FEATURES = tuple(
    sorted(
        {f for _, fl, sc, bs in CLASSES for f in (fl, sc, *bs) if f}
        | {"launches", "allreduce_bytes"}
    )
)
TINY = 1e-15  # lower bound of the unbounded rates (t0, t_launch): effectively zero
AT_BOUND = 0.995  # an efficiency above this sits on its peak


def peaks_for(
    device_name: str | None,
    dtype: str | None,
    *,
    flops: float | None = None,
    bandwidth: float | None = None,
    link: float | None = None,
) -> dict | None:
    """{"flops", "bandwidth", "link", "source"} for a device (overrides win); None if unknown."""
    name = (device_name or "").strip()
    low = name.lower()
    out = {"flops": None, "bandwidth": None, "link": None, "source": None}
    if name in CPU_PEAKS:
        out |= CPU_PEAKS[name] | {"source": f"CPU table ({name}, one core)"}
    elif low:
        pf = costs.peak_flops(name, dtype or "bfloat16")
        for gpu, bw, lk in GPU_MEMORY:
            if all(p.lower() in low for p in gpu.split()):
                out |= {"flops": pf, "bandwidth": bw, "link": lk, "source": f"GPU table ({gpu})"}
                break
    given = [(k, v) for k, v in (("flops", flops), ("bandwidth", bandwidth), ("link", link))
             if v is not None]  # fmt: skip
    for k, v in given:
        out[k] = float(v)
    if given:
        out["source"] = (out["source"] + " + flags") if out["source"] else "flags"
    if not out["flops"] or not out["bandwidth"]:
        return None
    return out


def _usable(F: dict, names) -> list[str]:
    return [n for n in names if n in F and np.any(np.asarray(F[n], dtype=float) > 0)]


def terms(F: dict, peaks: dict) -> list[dict]:
    """The model's rate parameters present in this table: each with its name, kind ("flops",
    "scores", "bytes", "launch", "link", "t0"), the features it multiplies, its class, and its lower
    bound (seconds per unit at peak)."""
    out = []
    for cls, fl, sc, bs in CLASSES:
        if fl and _usable(F, [fl]):
            out.append(dict(name=f"{cls}.flops", cls=cls, kind="flops", feats=[fl]))
        if sc and _usable(F, [sc]):
            out.append(dict(name=f"{cls}.scores", cls=cls, kind="scores", feats=[sc]))
        used = _usable(F, bs)
        if used:
            out.append(dict(name=f"{cls}.bytes", cls=cls, kind="bytes", feats=used))
    if _usable(F, ["launches"]):
        out.append(dict(name="launch", cls=None, kind="launch", feats=["launches"]))
    if _usable(F, ["allreduce_bytes"]) and peaks.get("link"):
        out.append(dict(name="allreduce", cls=None, kind="link", feats=["allreduce_bytes"]))
    out.append(dict(name="t0", cls=None, kind="t0", feats=[]))
    for t in out:
        peak = {
            "flops": peaks["flops"],
            "scores": peaks["flops"],
            "bytes": peaks["bandwidth"],
            "link": peaks.get("link"),
        }.get(t["kind"])
        t["peak"] = peak
        t["lo"] = 1.0 / peak if peak else TINY
    return out


def _columns(F: dict, spec: list[dict], n: int) -> np.ndarray:
    cols = []
    for t in spec:
        if t["kind"] == "t0":
            cols.append(np.ones(n))
        else:
            cols.append(sum(np.asarray(F[f], dtype=float) for f in t["feats"]) + np.zeros(n))
    return np.stack(cols, axis=1)


def _times(X: np.ndarray, s: np.ndarray, spec: list[dict]):
    """(step seconds, d step / d s_j) for rates `s` on feature columns X (rows x terms)."""
    parts = X * s  # seconds of each term
    t = np.zeros(X.shape[0])
    J = np.zeros_like(X)
    classes = dict.fromkeys(t_["cls"] for t_ in spec if t_["cls"])
    for cls in classes:
        comp = [j for j, t_ in enumerate(spec) if t_["cls"] == cls and t_["kind"] != "bytes"]
        mem = [j for j, t_ in enumerate(spec) if t_["cls"] == cls and t_["kind"] == "bytes"]
        tc = parts[:, comp].sum(axis=1) if comp else np.zeros(len(t))
        tm = parts[:, mem].sum(axis=1) if mem else np.zeros(len(t))
        cbound = tc >= tm
        t += np.where(cbound, tc, tm)
        for j in comp:
            J[:, j] = X[:, j] * cbound
        for j in mem:
            J[:, j] = X[:, j] * ~cbound
    for j, t_ in enumerate(spec):
        if t_["cls"] is None:
            t += parts[:, j]
            J[:, j] = X[:, j]
    return t, J


def _binding(X: np.ndarray, s: np.ndarray, spec: list[dict]) -> dict:
    """Share of the rows on which each term sets its class's time (1.0 for unclassed terms)."""
    parts = X * s
    out = {}
    for t in spec:
        out[t["name"]] = 1.0
    for cls in dict.fromkeys(t["cls"] for t in spec if t["cls"]):
        comp = [j for j, t in enumerate(spec) if t["cls"] == cls and t["kind"] != "bytes"]
        mem = [j for j, t in enumerate(spec) if t["cls"] == cls and t["kind"] == "bytes"]
        cb = parts[:, comp].sum(axis=1) >= parts[:, mem].sum(axis=1)
        for j in comp:
            out[spec[j]["name"]] = float(cb.mean())
        for j in mem:
            out[spec[j]["name"]] = float(1.0 - cb.mean())
    return out


def _starts(spec: list[dict], X: np.ndarray, y: np.ndarray, n_random: int, seed: int):
    """Start rates: every bounded rate at a common efficiency, unbounded ones at a share of y."""
    rng = np.random.default_rng(seed)
    out = []
    for eff in (0.3, 0.05, 0.008):
        for share in (0.05, 0.3):
            s = []
            for j, t in enumerate(spec):
                if t["peak"]:
                    s.append(t["lo"] / eff)
                else:  # t0, launch: `share` of the median step time
                    col = X[:, j]
                    s.append(max(share * np.median(y) / max(np.median(col), 1e-30), TINY * 10))
            out.append(np.log(s))
    base = np.array(out[2])
    for _ in range(n_random):
        out.append(base + rng.normal(0.0, 1.5, size=len(base)))
    return out


def fit(
    F: dict,
    y: np.ndarray,
    peaks: dict,
    *,
    objective: str = "relative",
    n_random: int = 2,
    seed: int = 0,
) -> dict:
    """Fitted roofline (a JSON-able dict, see `predict`)."""
    y = np.asarray(y, dtype=float)
    spec = terms(F, peaks)
    X = _columns(F, spec, len(y))
    w = y if objective == "relative" else np.full_like(y, np.median(y))
    lo = np.log([t["lo"] for t in spec])
    hi = np.where([bool(t["peak"]) for t in spec], lo + 40.0, np.log(1e3))  # 2e17x below peak

    def res(u):
        t, _ = _times(X, np.exp(u), spec)
        return (t - y) / w

    def jac(u):
        s = np.exp(u)
        _, J = _times(X, s, spec)
        return J * s / w[:, None]

    best = None
    for u0 in _starts(spec, X, y, n_random, seed):
        u0 = np.clip(u0, lo + 1e-9, hi - 1e-9)
        r = least_squares(res, u0, jac=jac, bounds=(lo, hi), method="trf", max_nfev=400)
        if best is None or r.cost < best.cost:
            best = r
    s = np.exp(best.x)
    binding = _binding(X, s, spec)
    return {
        "form": "roofline",
        "peaks": {k: peaks.get(k) for k in ("flops", "bandwidth", "link", "source")},
        "terms": [
            {
                "name": t["name"],
                "kind": t["kind"],
                "cls": t["cls"],
                "features": t["feats"],
                "seconds_per_unit": float(v),
                "peak": t["peak"],
                "binds": binding[t["name"]],
            }  # fmt: skip
            for t, v in zip(spec, s)
        ],
        "objective": objective,
    }


def predict(model: dict, values: dict):
    """Step seconds of a fitted roofline; `values` maps feature name -> scalar or array."""
    spec = [
        {"name": t["name"], "kind": t["kind"], "cls": t["cls"], "feats": t["features"]}
        for t in model["terms"]
    ]
    shape = np.broadcast(*[np.asarray(values[f]) for t in spec for f in t["feats"]]).shape
    n = int(np.prod(shape)) if shape else 1
    flat = {f: np.broadcast_to(np.asarray(values[f], dtype=float), shape).reshape(n)
            for t in spec for f in t["feats"]}  # fmt: skip
    X = _columns(flat, spec, n)
    t, _ = _times(X, np.array([t["seconds_per_unit"] for t in model["terms"]]), spec)
    return t.reshape(shape) if shape else float(t[0])


def features_of(model: dict) -> list[str]:
    return sorted({f for t in model["terms"] for f in t["features"]})


def efficiency(term: dict) -> float | None:
    """Achieved rate / peak (None for a term without a peak)."""
    if not term.get("peak"):
        return None
    return 1.0 / (term["seconds_per_unit"] * term["peak"])


UNITS = {"flops": "FLOP/s", "scores": "scores/s", "bytes": "B/s", "link": "B/s"}


def coefficient_lines(model: dict) -> list[str]:
    """Each rate in natural units beside its peak and efficiency; bounds flagged."""
    p = model["peaks"]
    lines = [
        f"physical model (roofline per op class), peaks from {p.get('source')}: "
        f"{p['flops']:.4g} FLOP/s, {p['bandwidth']:.4g} B/s"
        + (f", link {p['link']:.4g} B/s" if p.get("link") else "")
    ]
    for t in model["terms"]:
        s = t["seconds_per_unit"]
        if t["kind"] == "t0":
            lines.append(f"  {'fixed per step':22s} {s * 1e3:10.4g} ms")
        elif t["kind"] == "launch":
            lines.append(f"  {'per kernel launch':22s} {s * 1e6:10.4g} us")
        else:
            eff = efficiency(t)
            flag = ""
            if eff > 1.0 + 1e-9:
                flag = "  ERROR: above peak"
            elif eff >= AT_BOUND:
                flag = "  (at its peak bound)"
            binds = t.get("binds")
            note = "" if binds is None else f"  (binds on {binds:.0%} of the rows)"
            if binds == 0:
                note = "  (never binds: its rate is not identified, only bounded)"
            lines.append(
                f"  {t['name']:22s} {1.0 / s:10.4g} {UNITS[t['kind']]:8s} = {eff:7.2%} of "
                f"{t['peak']:.4g}{flag}{note}"
            )
    return lines


def check(model: dict, what: str) -> dict:
    """A saved roofline, checked: finite positive rates, no efficiency above 1."""
    if not isinstance(model.get("terms"), list) or not isinstance(model.get("peaks"), dict):
        raise UserError(f"{what}: roofline model without terms/peaks; refit it")
    known = set(costs.STEP_FEATURES)
    for t in model["terms"]:
        s = t.get("seconds_per_unit")
        if not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise UserError(f"{what}: term {t.get('name')!r} has rate {s!r}; refit it")
        bad = [f for f in t.get("features", []) if f not in known]
        if bad:
            raise UserError(f"{what}: term {t.get('name')!r} uses unknown feature(s) {bad}")
        eff = efficiency(t)
        if eff is not None and eff > 1.0 + 1e-6:
            raise UserError(
                f"{what}: term {t['name']!r} runs at {eff:.3g}x its peak; a rate above the "
                "device's peak is not physical"
            )
    return model
