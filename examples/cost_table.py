"""Print params, FLOPs/token and memory traffic/token for every preset, plus measured-vs-formula traffic.

    python examples/cost_table.py [--measure] [--measure-seq 64] [--batch 8]

Traffic columns: "fused" = bf16 activations, fp32 params, triton kernels, flash attention, fused AdamW;
"torch" = fp32 eager torch path with torch.optim.AdamW(foreach=False). --measure runs one real CPU step of
each preset at batch 1 (sequence --measure-seq, presets with a longer default sequence are shortened) under
model.traffic.measure_traffic and reports (measured / formula - 1) for the torch path.
"""

from __future__ import annotations

import argparse
import sys

from model import costs
from model.config import PRESETS, SEED_REPORTED_PARAMS


def _measure_error(cfg, seq: int) -> float:
    import torch

    from model.traffic import measure_traffic
    from model.transformer import Transformer

    cfg = cfg.replace(sequence_length=min(seq, cfg.sequence_length))
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, cfg.sequence_length))
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    _, loss = model(x, x)
    loss.backward()
    opt.step()  # steady-state optimizer step is what the formula models
    measured = measure_traffic(model, (x, x), opt)["total"]
    return measured / costs.memory_traffic(cfg, 1, optimizer="torch_adamw")["total"] - 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--batch", type=int, default=8, help="sequences per step for the traffic columns"
    )
    ap.add_argument(
        "--measure", action="store_true", help="also measure traffic on CPU (slow for big presets)"
    )
    ap.add_argument("--measure-seq", type=int, default=64)
    args = ap.parse_args(argv)
    if args.batch <= 0 or args.measure_seq <= 0:
        print("error: --batch and --measure-seq must be positive", file=sys.stderr)
        return 2
    head = [
        "preset",
        "params",
        "seed_reported",
        "exact/tok",
        "kaplan/tok",
        "porian/tok",
        "chinchilla/tok",
        "palm/tok",
        "fused B/tok",
        "torch B/tok",
        "meas.err",
    ]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for name, cfg in PRESETS.items():
        f = costs.flops_per_token(cfg)
        tokens = args.batch * cfg.sequence_length
        fused = (
            costs.memory_traffic(
                cfg,
                args.batch,
                dtype="bfloat16",
                kernels="triton",
                attention="flash",
                optimizer="fused_adamw",
            )["total"]
            / tokens
        )
        eager = (
            costs.memory_traffic(
                cfg, args.batch, kernels="torch", attention="sdpa", optimizer="torch_adamw"
            )["total"]
            / tokens
        )
        rep = SEED_REPORTED_PARAMS.get(name)
        err = f"{_measure_error(cfg, args.measure_seq):+.2%}" if args.measure else "-"
        row = [name, f"{costs.num_params(cfg) / 1e6:.2f}M", f"{rep / 1e6:.2f}M" if rep else "-"]
        row += [f"{f[k]:.3e}" for k in costs.FLOP_KEYS] + [f"{fused:.3e}", f"{eager:.3e}", err]
        print(" | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
