"""Print params, FLOPs/token, memory traffic/token and kernel launches for every preset, and
optionally the formula checked against one measured CPU step.

    python examples/cost_table.py [--arch llama|gpt2] [--batch 8] [--measure] [--measure-seq 64]

Traffic columns: "fused" = bf16 autocast over fp32 params, triton kernels, flash attention, fused
AdamW; "torch" = fp32 eager torch path with torch.optim.AdamW(foreach=False). "launches" is the
torch path's kernel launches per step. --measure runs one real CPU step of each preset at batch 1
(sequence --measure-seq; presets with a longer sequence are shortened) under
model.traffic.measure_step and reports measured / formula - 1 for the torch path's bytes and
launches (both are exact, so expect +0.00%). Takes seconds without --measure, about a minute with.
"""

from __future__ import annotations

from core import ArgParser, UserError, run_cli
from model import costs
from model.config import PRESETS, SEED_REPORTED_PARAMS

TORCH_PATH = dict(kernels="torch", attention="sdpa", optimizer="torch_adamw")
FUSED_PATH = dict(dtype="bfloat16", kernels="triton", attention="flash", optimizer="fused_adamw")


def _measure_error(cfg, seq: int) -> tuple[float, float]:
    import torch

    from model.traffic import measure_step
    from model.transformer import Transformer

    cfg = cfg.replace(sequence_length=min(seq, cfg.sequence_length))
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, cfg.sequence_length))
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    _, loss = model(x, x)
    loss.backward()
    opt.step()  # the formula models a steady-state step (optimizer state exists)
    got = measure_step(model, [(x, x)], opt, grads="persistent")
    bytes_ = costs.memory_traffic(cfg, 1, **TORCH_PATH)["total"]
    launches = costs.kernel_launches(cfg, 1, **TORCH_PATH)["total"]
    return got["total"] / bytes_ - 1, got["launches"] / launches - 1


def _row(name: str, cfg, args) -> list[str]:
    f = costs.flops_per_token(cfg)
    tokens = args.batch * cfg.sequence_length
    fused = costs.memory_traffic(cfg, args.batch, **FUSED_PATH)["total"] / tokens
    eager = costs.memory_traffic(cfg, args.batch, **TORCH_PATH)["total"] / tokens
    launches = costs.kernel_launches(cfg, args.batch, **TORCH_PATH)["total"]
    rep = SEED_REPORTED_PARAMS.get(name) if cfg.arch == "llama" else None
    err = "-"
    if args.measure:
        eb, el = _measure_error(cfg, args.measure_seq)
        err = f"{eb:+.2%} / {el:+.2%}"
    row = [name, f"{costs.num_params(cfg) / 1e6:.2f}M", f"{rep / 1e6:.2f}M" if rep else "-"]
    row += [f"{f[k]:.3e}" for k in costs.FLOP_KEYS]
    return row + [f"{fused:.3e}", f"{eager:.3e}", str(launches), err]


def _body(argv) -> int:
    ap = ArgParser(prog="cost_table.py", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="llama", choices=("llama", "gpt2"), help="model family")
    ap.add_argument("--batch", type=int, default=8, metavar="N", help="sequences per step")
    ap.add_argument("--measure", action="store_true", help="also measure one CPU step per preset")
    ap.add_argument(
        "--measure-seq", type=int, default=64, metavar="T", help="sequence length when measuring"
    )
    args = ap.parse_args(argv)
    if args.batch <= 0 or args.measure_seq <= 0:
        raise UserError("--batch and --measure-seq must be positive")
    head = ["preset", "params", "seed_reported", *(f"{k}/tok" for k in costs.FLOP_KEYS)]
    head += ["fused B/tok", "torch B/tok", "launches", "meas.err bytes / launches"]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for name, cfg in PRESETS.items():
        print(" | ".join(_row(name, cfg.replace(arch=args.arch), args)), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
