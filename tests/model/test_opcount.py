"""model.costs' memory traffic and kernel launches against the dispatcher-level counter
(model.traffic.measure_step) of the real training step, op by op and exactly.

Covered on CPU: both families, GQA/MQA, tied/untied, biases, fp32 and CPU bf16 autocast,
gradient accumulation with both gradient-zeroing modes, activation checkpointing,
torch.optim.AdamW, and (in a subprocess under TRITON_INTERPRET=1) the fused Triton RMSNorm and
SwiGLU kernels and FusedAdamW's kernel launches.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from model import costs
from model.config import ModelConfig
from model.traffic import measure_step
from model.transformer import Transformer


def _configs(n: int = 8, seed: int = 11) -> list[tuple[ModelConfig, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        H = rng.choice([2, 4])
        cfg = ModelConfig(
            arch=("llama", "gpt2")[i % 2],
            vocab_size=rng.choice([64, 128]),
            n_layer=rng.choice([1, 2]),
            n_embd=H * rng.choice([8, 16]),
            n_head=H,
            n_kv_head=rng.choice([g for g in (1, 2, 4) if H % g == 0]),
            ffn_hidden=rng.choice([32, 48]),
            sequence_length=rng.choice([8, 16]),
            tie_embeddings=rng.choice([False, True]),
            bias=rng.choice([False, True]),
        )
        out.append((cfg, rng.choice([1, 3])))
    return out


CONFIGS = _configs()


class _Autocast(torch.nn.Module):
    """Runs the wrapped model's forward under CPU bf16 autocast (the trainer autocasts on CUDA)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x, y)


def _batches(cfg: ModelConfig, B: int, n: int = 1):
    g = torch.Generator().manual_seed(0)
    shape = (B, cfg.sequence_length)
    return [
        (torch.randint(0, cfg.vocab_size, shape, generator=g),) * 2 for _ in range(n)
    ]  # fmt: skip


def _measured_table(r: dict) -> dict:
    return {k: (r["counts"][k], float(r["bytes"][k])) for k in r["counts"]}


def _check(cfg, B, *, acc=1, grads="none", optimizer="none", bf16=False, ckpt=False):
    torch.manual_seed(0)
    model = Transformer(cfg, activation_checkpointing=ckpt)
    opt = None
    if optimizer == "torch_adamw":
        opt = torch.optim.AdamW(model.parameters(), foreach=False)
        _, loss = model(*_batches(cfg, B)[0])
        loss.backward()
        opt.step()  # optimizer state exists: a steady-state step is measured
    step_model = _Autocast(model) if bf16 else model
    r = measure_step(step_model, _batches(cfg, B, acc), opt, grads=grads)
    kw = dict(acc_steps=acc, grads=grads, optimizer=optimizer, activation_checkpointing=ckpt)
    kw["dtype"] = "bfloat16" if bf16 else "float32"
    assert _measured_table(r) == costs.op_table(cfg, B, **kw)
    assert r["launches"] == costs.kernel_launches(cfg, B, **kw)["total"]
    assert r["total"] == costs.memory_traffic(cfg, B, **kw)["total"]
    return r


@pytest.mark.parametrize("cfg,B", CONFIGS)
def test_forward_backward_op_by_op(cfg, B):
    r = _check(cfg, B)
    assert r["counts"]["aten::mm"] > 0 and not any("view" in k for k in r["counts"])


@pytest.mark.parametrize("cfg,B", CONFIGS[:4])
def test_bf16_autocast_op_by_op(cfg, B):
    r = _check(cfg, B, bf16=True)
    assert r["counts"]["aten::_to_copy"] > 0


@pytest.mark.parametrize("cfg,B", CONFIGS[4:6])
@pytest.mark.parametrize("bf16", [False, True])
def test_activation_checkpointing_op_by_op(cfg, B, bf16):
    _check(cfg, B, ckpt=True, bf16=bf16)


@pytest.mark.parametrize("grads", ["none", "persistent"])
@pytest.mark.parametrize("cfg,B", CONFIGS[:2] + CONFIGS[5:6])
def test_accumulation_and_torch_adamw_op_by_op(cfg, B, grads):
    r = _check(cfg, B, acc=2, grads=grads, optimizer="torch_adamw")
    assert r["counts"]["aten::addcdiv_"] == sum(1 for _ in Transformer(cfg).parameters())


def test_launch_closed_form_reads_like_the_model():
    """Per block (fp32, torch kernels, MHA): llama runs 32 ops forward (RMSNorm 6 x 2, RoPE 5 x 2,
    4 linears + SDPA + 2 residual adds... ) and 60 backward; gpt2 10 forward and 15 backward, plus
    one bias-grad reduction per biased linear. Each extra micro-step reruns everything and adds
    into every parameter's grad once."""
    cfg = ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=4, sequence_length=8)
    for arch, bias, per_block in (
        ("llama", 0, 92),
        ("llama", 1, 94),
        ("gpt2", 0, 25),
        ("gpt2", 1, 29),
    ):
        c1 = cfg.replace(arch=arch, bias=bool(bias))
        kw = dict(optimizer="none", grads="none")
        one = costs.kernel_launches(c1, 2, **kw)["total"]
        two = costs.kernel_launches(c1.replace(n_layer=2), 2, **kw)["total"]
        acc = costs.kernel_launches(c1, 2, acc_steps=2, **kw)["total"]
        assert two - one == per_block
        assert acc == 2 * one + sum(1 for _ in Transformer(c1).parameters())


_TRITON_SCRIPT = textwrap.dedent(
    """
    import torch
    from kernels import FusedAdamW
    from model import costs
    from model.config import ModelConfig
    from model.traffic import measure_step
    from model.transformer import Transformer
    from tests.model.test_opcount import _Autocast, _batches, _measured_table

    base = ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=4, n_kv_head=2,
                       ffn_hidden=48, sequence_length=8, tie_embeddings=True, kernels="triton")
    cases = ((base, False, 2, False), (base, True, 1, False),
             (base.replace(arch="gpt2", bias=True), False, 1, False), (base, True, 1, True))
    # one op of ours at a time, and pairs: each op's path is counted on its own switch
    for ops in ("rmsnorm", "swiglu", "linear_ce", "rmsnorm+linear_ce", "swiglu+linear_ce"):
        cases += ((base.replace(kernels=ops), False, 1, False),
                  (base.replace(kernels=ops, tie_embeddings=False), True, 1, True))
    for cfg, bf16, acc, ckpt in cases:
        torch.manual_seed(0)
        model = Transformer(cfg, activation_checkpointing=ckpt)
        run = _Autocast(model) if bf16 else model
        kw = dict(acc_steps=acc, dtype="bfloat16" if bf16 else "float32")
        r = measure_step(run, _batches(cfg, 3, acc), None)
        want = costs.op_table(cfg, 3, grads="none", optimizer="none",
                              activation_checkpointing=ckpt, **kw)
        assert _measured_table(r) == want, (cfg.arch, bf16, _measured_table(r), want)
        assert any(k.startswith("triton::") for k in r["counts"]) == (cfg.arch == "llama")
        assert any("swiglu" in k for k in r["counts"]) == cfg.uses_kernel("swiglu")
        assert any("_ce_fwd" in k for k in r["counts"]) == cfg.uses_kernel("linear_ce")
        assert any("rmsnorm" in k for k in r["counts"]) == cfg.uses_kernel("rmsnorm")
    # The fused cross-entropy in several chunks of rows (uneven: 24 rows in chunks of 5), with
    # fp32 and with bf16 matmuls: its chunk loop's ops, as model/_opcount.py's fused_head counts.
    import kernels.cross_entropy as kce
    from model import _opcount
    small = 5 * 64 * 4  # bytes of 5 fp32 rows of logits
    for bf16 in (False, True):
        kce.CHUNK_BYTES = small // (2 if bf16 else 1)
        _opcount.flce_chunks.__defaults__ = (kce.CHUNK_BYTES,)
        assert _opcount.flce_chunks(24, 64, 2 if bf16 else 4) == (5, 5)
        torch.manual_seed(0)
        model = Transformer(base.replace(tie_embeddings=False))
        r = measure_step(_Autocast(model) if bf16 else model, _batches(model.cfg, 3), None)
        want = costs.op_table(model.cfg, 3, grads="none", optimizer="none",
                              dtype="bfloat16" if bf16 else "float32")
        assert _measured_table(r) == want, (bf16, _measured_table(r), want)
    kce.CHUNK_BYTES = 1 << 30
    _opcount.flce_chunks.__defaults__ = (1 << 30,)
    # FusedAdamW on its Triton path (clip + step + in-place zeroing): its launches
    groups = [{"params": [p for p in model.parameters() if p.dim() == 2]},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0}]
    opt = FusedAdamW(groups, lr=1e-3)
    step = lambda: (opt.clip_grad_norm_(1.0), opt.step())
    cfg = model.cfg
    r = measure_step(model, _batches(cfg, 3, 2), opt, grads="persistent", step=step)
    table = costs.op_table(cfg, 3, acc_steps=2)
    for op in ("triton::_sumsq_kernel", "triton::_finalize_kernel", "triton::_adamw_kernel",
               "aten::zero_"):
        assert r["counts"].get(op) == table[op][0], (op, r["counts"], table)
    assert r["launches"] == costs.kernel_launches(cfg, 3, acc_steps=2)["total"], r["counts"]
    print("ok")
    """
)


def test_triton_backend_and_fused_adamw_under_interpreter():
    """The fused RMSNorm/SwiGLU/linear+CE kernels, all and each alone or in pairs, op by op (a
    Triton kernel's bytes: its tensor arguments, each read or written once), and FusedAdamW's
    launches. Its bytes are not compared: the
    counter's one-pass-per-argument convention undercounts its in-place read-modify-write."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run(
        [sys.executable, "-c", _TRITON_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
