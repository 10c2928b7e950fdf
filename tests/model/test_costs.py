"""model.costs against the real model: parameter counts and FlopCounter FLOPs (both families),
FLOP/N conventions, step features, peak table, vectorized API, and the stdlib-only import."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from core import UserError
from model import _opcount as _ops
from model import costs
from model.config import PRESETS, ModelConfig
from model.transformer import Transformer


def random_configs(n: int = 10, seed: int = 5) -> list[tuple[ModelConfig, int]]:
    """Tiny configs of both families varying depth, width, heads, GQA/MQA, vocab, sequence,
    batch, tying and biases."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        H = rng.choice([2, 4])
        hd = rng.choice([8, 16])
        arch = ("llama", "gpt2")[i % 2]
        cfg = ModelConfig(
            arch=arch,
            vocab_size=rng.choice([64, 256]),
            n_layer=rng.choice([1, 2, 3]),
            n_embd=H * hd,
            n_head=H,
            n_kv_head=rng.choice([g for g in (1, 2, 4) if H % g == 0]),
            ffn_hidden=rng.choice([32, 64, None]),
            sequence_length=rng.choice([16, 32]),
            tie_embeddings=rng.choice([False, True]),
            bias=rng.choice([False, True]),
        )
        out.append((cfg, rng.choice([1, 2])))
    return out


CONFIGS = random_configs()


def test_configs_cover_the_axes():
    cs = [c for c, _ in CONFIGS]
    assert {c.arch for c in cs} == {"llama", "gpt2"} and len({c.n_layer for c in cs}) > 1
    assert {c.kv_heads < c.n_head for c in cs} == {False, True} and any(c.kv_heads == 1 for c in cs)
    assert {c.tie_embeddings for c in cs} == {False, True} and {c.bias for c in cs} == {False, True}
    assert len({b for _, b in CONFIGS}) == 2 and any(c.ffn_hidden is None for c in cs)


FAMILIES = [
    ("llama", False, False),
    ("llama", True, True),
    ("gpt2", False, True),
    ("gpt2", True, False),
]


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("arch,tie,bias", FAMILIES)
def test_num_params_presets(name, arch, tie, bias):
    cfg = PRESETS[name].replace(arch=arch, tie_embeddings=tie, bias=bias)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert costs.num_params(cfg) == sum(p.numel() for p in model.parameters())


def test_num_params_random_and_breakdown():
    for cfg, _ in CONFIGS:
        model = Transformer(cfg)
        assert costs.num_params(cfg) == model.num_params() == costs.law_params(cfg, "total")
        b = costs.param_breakdown(cfg)
        parts = b["non_embedding"] + b["embedding"] + b["lm_head"] + b["position_embedding"]
        assert b["total"] == parts
        assert b["non_embedding"] == cfg.n_layer * b["per_layer"] + b["final_norm"]
        wpe = model.wpe.weight.numel() if cfg.arch == "gpt2" else 0
        assert b["position_embedding"] == wpe
        blocks = sum(p.numel() for p in model.blocks.parameters())
        assert b["per_layer"] * cfg.n_layer == blocks
        assert b["final_norm"] == sum(p.numel() for p in model.ln_f.parameters())


def _batch(cfg: ModelConfig, B: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (B, cfg.sequence_length), generator=g)
    y = torch.randint(0, cfg.vocab_size, (B, cfg.sequence_length), generator=g)
    return x, y


def _counted_flops(model, x, y) -> int:
    # The math SDPA backend decomposes attention into bmm, which the counter sees; the CPU flash
    # kernel is not registered with FlopCounterMode, so it would silently count 0 for attention.
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        _, loss = model(x, y)
        loss.backward()
    return fc.get_total_flops()


@pytest.mark.parametrize("cfg,B", CONFIGS)
def test_exact_flops_equal_flop_counter(cfg, B):
    torch.manual_seed(0)
    x, y = _batch(cfg, B)
    flops = costs.train_flops(cfg, B)
    assert _counted_flops(Transformer(cfg), x, y) == flops["exact"]
    assert flops["exact"] == flops["matmul"] + flops["other"]


@pytest.mark.parametrize("cfg,B", CONFIGS[:4])
def test_exact_flops_with_activation_checkpointing(cfg, B):
    x, y = _batch(cfg, B)
    model = Transformer(cfg, activation_checkpointing=True)
    got = costs.train_flops(cfg, B, activation_checkpointing=True)["exact"]
    assert _counted_flops(model, x, y) == got > costs.train_flops(cfg, B)["exact"]


class _SoftmaxElements(TorchDispatchMode):
    """Counts the output elements of softmax and softmax-backward, which the math SDPA path runs
    once per score per pass (its forward is _safe_softmax since torch 2.5)."""

    OPS = ("aten._softmax", "aten._safe_softmax", "aten._softmax_backward_data")

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func.overloadpacket) in self.OPS:
            self.n += out.numel()
        return out


@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("cfg,B", CONFIGS[:4])
def test_attention_scores_equal_softmax_elements(cfg, B, ckpt):
    x, y = _batch(cfg, B)
    model = Transformer(cfg, activation_checkpointing=ckpt)
    with _SoftmaxElements() as count, sdpa_kernel(SDPBackend.MATH):
        model(x, y)[1].backward()
    f = costs.step_features(cfg, B, acc_steps=3, activation_checkpointing=ckpt)
    want = (2 + ckpt) * cfg.n_layer * B * cfg.n_head * cfg.sequence_length**2
    assert count.n == want > 0 and f["attention_scores"] == 3 * want


def test_other_conventions():
    cfg = PRESETS["210M"]
    f = costs.flops_per_token(cfg)
    n = costs.num_params(cfg)
    ne = costs.param_breakdown(cfg)["non_embedding"]
    assert f["kaplan"] == 6 * ne == 6 * costs.law_params(cfg, "kaplan")
    assert (
        f["porian"] == 6 * (ne + cfg.vocab_size * cfg.n_embd) == 6 * costs.law_params(cfg, "porian")
    )
    assert f["palm"] == 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.sequence_length
    # Hägele et al. 2024's flops.ipynb (Chinchilla App. F): the 210M model (vocab 50257 there)
    # costs about 1.597e9 FLOPs per token.
    v50257 = cfg.replace(vocab_size=50257)
    assert abs(costs.flops_per_token(v50257)["chinchilla"] / 1.597e9 - 1) < 0.01
    assert costs.train_flops(cfg, 4)["exact"] == 4 * costs.train_flops(cfg, 1)["exact"]
    g = cfg.replace(arch="gpt2", bias=True)
    wpe = g.sequence_length * g.n_embd
    assert costs.law_params(g, "kaplan") == costs.num_params(g) - g.vocab_size * g.n_embd - wpe
    assert costs.flops_per_token(g)["palm"] == 6 * (costs.num_params(g) - wpe) + 12 * 24 * 768 * 512
    with pytest.raises(UserError, match="convention"):
        costs.law_params(cfg, "hoffmann")


def test_step_features_contract():
    cfg = PRESETS["tiny"]
    one = costs.step_features(cfg, 4)
    assert tuple(one) == costs.STEP_FEATURES and all(isinstance(v, float) for v in one.values())
    assert one["bytes"] == sum(one[f"bytes_{k}"] for k in costs.TRAFFIC_KEYS[:-1])
    assert (
        one["flops"]
        == one["matmul_flops"] + one["other_flops"]
        == costs.train_flops(cfg, 4)["exact"]
    )
    assert one["tokens"] == 4 * 64 and one["micro_steps"] == 1 and one["allreduce_bytes"] == 0
    four = costs.step_features(cfg, 4, acc_steps=4, dp=8)
    assert four["flops"] == 4 * one["flops"] and four["micro_steps"] == 4
    assert four["tokens"] == 4 * one["tokens"]
    # ring all-reduce of fp32 grads: each device sends 2 (dp - 1) / dp of 4 * params bytes
    assert four["allreduce_bytes"] == 2 * 7 / 8 * 4 * costs.num_params(cfg)
    assert one["bytes"] < four["bytes"] < 4 * one["bytes"]  # the optimizer runs once per step
    assert four["launches"] > one["launches"]
    ckpt = costs.step_features(cfg, 4, activation_checkpointing=True)
    assert all(ckpt[k] > one[k] for k in ("flops", "bytes", "launches", "bytes_norm"))
    assert ckpt["bytes_optimizer"] == one["bytes_optimizer"]


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(acc_steps=0), "acc_steps"),
        (dict(dp=0), "dp"),
        (dict(dtype="int8"), "dtype"),
        (dict(kernels="cuda"), "kernels"),
        (dict(optimizer="sgd"), "optimizer"),
        (dict(average="mean"), "average"),
        (dict(grads="zero"), "grads"),
    ],
)
def test_step_features_reject_bad_values(kw, needle):
    with pytest.raises(UserError, match=needle) as e:
        costs.step_features(PRESETS["tiny"], 2, **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="batch_size"):
        costs.memory_traffic(PRESETS["tiny"], 0)


def test_traffic_classes_and_fused_paths_move_fewer_bytes():
    cfg = PRESETS["124M"]
    torch_path = costs.memory_traffic(cfg, 8, optimizer="torch_adamw")
    fused = costs.memory_traffic(cfg, 8, dtype="bfloat16", kernels="triton", attention="flash")
    assert tuple(torch_path) == costs.TRAFFIC_KEYS
    assert abs(sum(v for k, v in fused.items() if k != "total") - fused["total"]) < 1
    assert fused["total"] < torch_path["total"]
    assert fused["norm"] < costs.memory_traffic(cfg, 8, dtype="bfloat16")["norm"]
    assert torch_path["cast"] == 0 < fused["cast"]
    opt = costs.memory_traffic(cfg, 8)["optimizer"]
    assert costs.memory_traffic(cfg, 8, average="ema")["optimizer"] > opt
    assert costs.memory_traffic(cfg, 8, average="swa+ema")["optimizer"] > opt
    assert costs.kernel_launches(cfg, 8) == costs.kernel_launches(cfg, 64)  # batch-free


def test_peak_table_and_mfu():
    cfg = PRESETS["124M"]
    fpt = costs.flops_per_token(cfg)["palm"]
    assert costs.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert costs.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 495e12  # TF32
    assert costs.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert costs.peak_flops("NVIDIA GH200 480GB", "bf16") == costs.peak_flops("NVIDIA H200", "bf16")
    assert costs.mfu(1e5, cfg, "NVIDIA H100 80GB HBM3") == pytest.approx(1e5 * fpt / 989e12)
    assert costs.mfu(1e5, cfg, "NVIDIA A100-SXM4-40GB") == pytest.approx(1e5 * fpt / 312e12)
    assert costs.mfu(1e5, cfg, "NVIDIA A100-SXM4-40GB", "float32") == pytest.approx(
        1e5 * fpt / 156e12
    )
    assert costs.mfu(1e5, cfg, "Intel(R) Xeon(R) CPU") is None and costs.mfu(1e5, cfg, None) is None
    with pytest.raises(UserError, match="dtype"):
        costs.peak_flops("NVIDIA H100", "int4")


def _arrays(cfgs, f):
    return np.array([f(c) for c in cfgs])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "impl",
    [
        dict(dtype="bfloat16", kernels="triton", attention="flash", average="ema"),
        dict(dtype="float32", kernels="torch", optimizer="torch_adamw", grads="none"),
    ],
)
def test_vectorized_agrees_with_scalar(arch, impl):
    cfgs = [c.replace(arch=arch, bias=True) for c, _ in CONFIGS] + [
        PRESETS["360M"].replace(arch=arch)
    ]
    n = len(cfgs)
    B, acc = np.arange(1, n + 1), np.arange(n) % 3 + 1
    ckpt, dp = np.arange(n) % 2, np.arange(n) % 4 + 1
    out = costs.vectorized(
        *(_arrays(cfgs, lambda c, k=k: getattr(c, k)) for k in ("vocab_size", "n_layer", "n_embd")),
        *(_arrays(cfgs, lambda c, k=k: getattr(c, k)) for k in ("n_head", "kv_heads", "hidden")),
        _arrays(cfgs, lambda c: c.sequence_length), B, _arrays(cfgs, lambda c: c.tie_embeddings),
        bias=_arrays(cfgs, lambda c: c.bias), arch=arch, acc_steps=acc, dp=dp,
        activation_checkpointing=ckpt, **impl,
    )  # fmt: skip
    for i, c in enumerate(cfgs):
        kw = dict(acc_steps=int(acc[i]), activation_checkpointing=bool(ckpt[i]), **impl)
        ref = costs.step_features(c, int(B[i]), dp=int(dp[i]), **kw)
        for k in costs.STEP_FEATURES:
            assert out[k][i] == pytest.approx(ref[k], rel=1e-12, abs=1e-9), k
        launches = costs.kernel_launches(c, int(B[i]), **kw)
        assert all(out[f"launches_{k}"][i] == launches[k] for k in costs.TRAFFIC_KEYS[:-1])
        assert all(out[f"law_{k}"][i] == costs.law_params(c, k) for k in costs.LAW_CONVENTIONS)
        assert out["memory_traffic"][i] == out["bytes"][i]
    few = costs.vectorized(64, 2, 32, 4, 4, 64, 16, B, features=("launches",))
    assert set(few) == {"launches", *(f"law_{k}" for k in costs.LAW_CONVENTIONS)}
    with pytest.raises(UserError, match="feature"):
        costs.vectorized(64, 2, 32, 4, 4, 64, 16, B, features=("speed",))


def test_costs_and_config_import_without_torch():
    code = (
        "import sys, model.config, model.costs\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fused_add_norm_and_linear_cross_entropy_counts():
    """The fused ops' bytes by hand at one config (fp32 and bf16 autocast); model/_opcount.py's
    ledger of them is checked op by op against the dispatcher in test_opcount.py."""
    cfg = ModelConfig(vocab_size=100, n_layer=2, n_embd=16, n_head=2, ffn_hidden=32,
                      sequence_length=8, kernels="triton")  # fmt: skip
    B, L, d, V = 3, 2, 16, 100
    N = B * 8
    for dtype, a in (("float32", 4), ("bfloat16", 2)):
        t = costs.op_table(cfg, B, dtype=dtype, optimizer="none", grads="none")
        ac = int(a == 2)
        progs = N  # the dw partial rows at this size: one per row
        # 2L + 1 norms forward: the first plain (x, w in; y, rstd out), 2L with the residual
        # (x in the compute dtype, residual, w in; s, y, rstd out)
        fwd = 4 * (2 * N * d + d + N) + 2 * L * (4 * (3 * N * d + d + N) + a * N * d)
        assert t["triton::_rmsnorm_fwd_kernel"] == (2 * L + 1, fwd)
        # backward: dy, x|s, w, rstd in, dx out, dw partials; + ds in for all but the final norm,
        # + the bf16 branch grad out under autocast
        dx = (2 * L + 1) * 4 * (3 * N * d + d + N + progs * d) + (2 * L - 1) * 4 * N * d
        dx += 2 * L * ac * a * N * d
        assert t["triton::_rmsnorm_bwd_dx_kernel"] == (2 * L + 1, dx)
        # the cross-entropy kernel: the chunk's logits (read, then overwritten with their grad),
        # 4 B loss + 8 B target per row; one chunk here
        assert t["triton::_ce_fwd_bwd_kernel"] == (1, a * N * V + 12 * N)
        assert "aten::_log_softmax" not in t and "aten::nll_loss_forward" not in t
    # FLOPs: the chunked head does the same three matmuls as logits + cross-entropy
    assert costs.train_flops(cfg, B) == costs.train_flops(cfg.replace(kernels="torch"), B)


def test_fused_path_drops_the_logits_traffic_at_124m():
    cfg = PRESETS["124M"]
    ours = costs.memory_traffic(cfg, 32, dtype="bfloat16", kernels="triton")
    torch_path = costs.memory_traffic(cfg, 32, dtype="bfloat16", kernels="torch")
    N, V = 32 * cfg.sequence_length, cfg.vocab_size
    # torch: bf16 logits written, cast to fp32, log-softmax, NLL, and their backward: > 20 B per
    # logit; ours: the bf16 chunk logits written, read twice, grad written, read by two mms
    assert torch_path["embedding_head"] - ours["embedding_head"] > 8 * N * V
    assert ours["other"] < torch_path["other"]  # residual adds folded into the norms
    assert _ops.flce_chunks(N, V, 2) == (2, N // 2)  # two 1 GiB chunks of bf16 logits
