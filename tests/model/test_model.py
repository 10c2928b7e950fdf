"""Transformer behaviour of both families: shapes, init, overfitting, backend equivalence,
dropout, activation checkpointing, a Triton-free torch backend, bad configs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from core import UserError
from model.config import KERNEL_OPS, ModelConfig, parse_kernels
from model.transformer import Transformer


def test_forward_shapes_and_loss():
    cfg = ModelConfig(
        vocab_size=32, n_layer=1, n_embd=16, n_head=2, n_kv_head=1, ffn_hidden=32, sequence_length=8
    )
    m = Transformer(cfg)
    x = torch.randint(0, 32, (3, 8))
    logits, loss = m(x)
    assert logits.shape == (3, 8, 32) and loss is None
    _, loss = m(x, x)
    assert abs(loss.item() - torch.log(torch.tensor(32.0)).item()) < 0.5  # near-uniform at init
    with pytest.raises(ValueError):
        m(torch.zeros(1, 9, dtype=torch.long))


def test_tied_embeddings_share_storage_and_init_scale():
    cfg = ModelConfig(
        vocab_size=32,
        n_layer=8,
        n_embd=32,
        n_head=2,
        ffn_hidden=64,
        sequence_length=8,
        tie_embeddings=True,
    )
    m = Transformer(cfg)
    assert m.lm_head.weight is m.wte.weight
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in m.blocks])
    assert abs(proj.std().item() / (0.02 / 4) - 1) < 0.1  # init_std / sqrt(2L)


def test_overfits_one_batch():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=32, n_layer=1, n_embd=32, n_head=4, n_kv_head=2, ffn_hidden=64, sequence_length=8
    )
    m = Transformer(cfg)
    x = torch.randint(0, 32, (2, 8))
    y = torch.randint(0, 32, (2, 8))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-2, weight_decay=0.0)
    steps = 0
    while steps < 300:
        _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after {steps} steps"


def test_backends_agree_under_interpreter():
    # Runs in a subprocess because TRITON_INTERPRET must be set before triton is imported.
    code = textwrap.dedent("""
        import torch
        from model.config import ModelConfig
        from model.transformer import Transformer
        cfg = ModelConfig(vocab_size=32, n_layer=1, n_embd=16, n_head=2, ffn_hidden=32,
                          sequence_length=8)
        torch.manual_seed(0)
        a = Transformer(cfg)
        b = Transformer(cfg.replace(kernels="triton"))
        assert list(a.state_dict()) == list(b.state_dict())
        b.load_state_dict(a.state_dict())
        x = torch.randint(0, 32, (2, 8))
        la, _ = a(x)
        lb, _ = b(x)
        err = ((la - lb).abs().max() / la.abs().max()).item()
        assert err < 1e-5, err
        # Training: the fused path (residual adds in the norms, chunked linear + cross-entropy)
        # gives the loss and every grad of the torch path, also when recomputing the blocks.
        cfg2 = cfg.replace(n_layer=2)
        for ckpt, chunks in ((False, 1), (True, 3)):
            import kernels.cross_entropy as kce
            kce.CHUNK_BYTES = 1 << 30 if chunks == 1 else 6 * 32 * 4  # 16 rows: 3 chunks
            torch.manual_seed(0)
            a = Transformer(cfg2, activation_checkpointing=ckpt)
            b = Transformer(cfg2.replace(kernels="triton"), activation_checkpointing=ckpt)
            b.load_state_dict(a.state_dict())
            _, la = a(x, x)
            logits, lb = b(x, x)
            assert logits is None  # the B x T x V logits never exist
            la.backward(); lb.backward()
            assert abs(la.item() - lb.item()) < 1e-5 * la.item(), (la.item(), lb.item())
            for (n, p), q in zip(a.named_parameters(), b.parameters()):
                e = ((p.grad - q.grad).abs().max() / p.grad.abs().max()).item()
                assert e < 1e-5, (ckpt, n, e)
        # Each op of ours alone or in a pair (the rest torch's): the same loss and grads.
        kce.CHUNK_BYTES = 1 << 30
        for ops in ("rmsnorm", "swiglu", "linear_ce", "rmsnorm+linear_ce", "swiglu+linear_ce"):
            torch.manual_seed(0)
            a = Transformer(cfg2)
            b = Transformer(cfg2.replace(kernels=ops))
            b.load_state_dict(a.state_dict())
            _, la = a(x, x)
            logits, lb = b(x, x)
            assert (logits is None) == ("linear_ce" in ops), ops
            la.backward(); lb.backward()
            assert abs(la.item() - lb.item()) < 1e-5 * la.item(), (ops, la.item(), lb.item())
            for (n, p), q in zip(a.named_parameters(), b.parameters()):
                e = ((p.grad - q.grad).abs().max() / p.grad.abs().max()).item()
                assert e < 1e-5, (ops, n, e)
        print("ok", err)
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


GPT2 = ModelConfig(
    arch="gpt2", vocab_size=32, n_layer=2, n_embd=24, n_head=2, sequence_length=8, bias=True
)


def test_gpt2_family_structure():
    m = Transformer(GPT2)
    names = dict(m.named_parameters())
    assert names["wpe.weight"].shape == (8, 24) and "rope_cos" not in dict(m.named_buffers())
    assert isinstance(m.blocks[0].ln_1, torch.nn.LayerNorm) and m.blocks[0].ln_1.bias is not None
    assert names["blocks.0.mlp.c_fc.weight"].shape == (4 * 24, 24)  # GELU MLP, 4 d by default
    assert all(names[f"blocks.1.{k}.bias"].abs().sum() == 0 for k in ("attn.c_attn", "mlp.c_fc"))
    assert m.lm_head.bias is None
    plain = Transformer(GPT2.replace(bias=False, ffn_hidden=40))
    assert not any(n.endswith(".bias") for n, _ in plain.named_parameters())
    assert plain.blocks[0].mlp.c_fc.out_features == 40
    # odd head dims are fine without RoPE
    Transformer(GPT2.replace(n_embd=30, n_head=2))
    llama_bias = dict(
        Transformer(GPT2.replace(arch="llama", n_embd=32, n_head=4)).named_parameters()
    )
    assert "blocks.0.attn.c_attn.bias" in llama_bias and "blocks.0.mlp.w1.bias" not in llama_bias


def test_gpt2_learned_positions_matter_and_it_overfits():
    torch.manual_seed(0)
    m = Transformer(GPT2.replace(n_layer=1))
    x = torch.zeros(1, 8, dtype=torch.long)  # one token repeated: only positions tell them apart
    logits, _ = m(x)
    assert (logits[0, 0] - logits[0, 1]).abs().max() > 0
    y = torch.arange(8).view(1, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-2, weight_decay=0.0)
    for _ in range(60):
        _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1  # position-only targets are learnable


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dropout_only_in_training(arch):
    cfg = GPT2.replace(arch=arch, n_embd=32, n_head=4, dropout=0.5)
    m = Transformer(cfg)
    x = torch.randint(0, 32, (2, 8))
    torch.manual_seed(1)
    a, _ = m(x)
    b, _ = m(x)
    assert not torch.equal(a, b)
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_activation_checkpointing_keeps_loss_and_grads(arch):
    cfg = GPT2.replace(arch=arch, n_embd=32, n_head=4)
    torch.manual_seed(0)
    a = Transformer(cfg)
    b = Transformer(cfg, activation_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 32, (2, 8))
    for m in (a, b):
        m(x, x)[1].backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), n


def test_torch_backend_never_imports_triton():
    code = textwrap.dedent("""
        import sys, torch
        from model.config import ModelConfig
        from model.transformer import Transformer
        for arch in ("llama", "gpt2"):
            m = Transformer(ModelConfig(arch=arch, vocab_size=32, n_layer=1, n_embd=16, n_head=2,
                                        ffn_hidden=32, sequence_length=8))
            x = torch.randint(0, 32, (2, 8))
            m(x, x)[1].backward()
        assert "triton" not in sys.modules, "the torch backend imported triton"
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(n_embd=30, n_head=4), "divisible by n_head"),
        (dict(n_embd=36, n_head=4), "even"),
        (dict(n_head=4, n_kv_head=3), "n_kv_head"),
        (dict(n_layer=0), "n_layer"),
        (dict(kernels="cuda"), "kernels"),
        (dict(kernels="rmsnorm+gelu"), "unknown op 'gelu'"),
        (dict(kernels="swiglu+swiglu"), "named twice"),
        (dict(kernels=""), "kernels"),
        (dict(kernels="auto"), "kernels"),  # train's and the sweep's, decided before a model
        (dict(attention="xformers"), "attention"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(arch="bert"), "arch"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(dropout="0.1"), "dropout"),
        (dict(bias="yes"), "bias"),
        (dict(tie_embeddings=2), "tie_embeddings"),
    ],
)
def test_bad_configs(kw, needle):
    with pytest.raises(UserError) as e:
        ModelConfig(**kw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_kernels_per_op_have_one_spelling():
    """Ops of ours joined by '+' in any order name one choice; all of them is "triton"; gpt2
    has no kernels of ours whatever the choice."""
    cfg = ModelConfig(kernels="linear_ce+rmsnorm")
    assert cfg.kernels == "rmsnorm+linear_ce" and cfg == ModelConfig(kernels="rmsnorm+linear_ce")
    assert [cfg.uses_kernel(op) for op in KERNEL_OPS] == [True, False, True]
    assert ModelConfig(kernels="swiglu+linear_ce+rmsnorm").kernels == "triton"
    assert not any(ModelConfig(kernels="torch").uses_kernel(op) for op in KERNEL_OPS)
    gpt2 = ModelConfig(arch="gpt2", kernels="triton")
    assert not any(gpt2.uses_kernel(op) for op in KERNEL_OPS)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert parse_kernels("auto", auto=True) == "auto"
    with pytest.raises(ValueError):
        cfg.uses_kernel("gelu")


def test_bool_fields_accept_table_zero_one():
    cfg = ModelConfig(bias=1, tie_embeddings=0)
    assert cfg.bias is True and cfg.tie_embeddings is False
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
