"""Transformer behaviour: overfitting, backend equivalence, bad configs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from model.config import ConfigError, ModelConfig
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
    for step in range(300):
        _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after {step + 1} steps"


def test_backends_agree_under_interpreter():
    # Runs in a subprocess because TRITON_INTERPRET must be set before triton is imported.
    code = textwrap.dedent("""
        import torch
        from model.config import ModelConfig
        from model.transformer import Transformer
        cfg = ModelConfig(vocab_size=32, n_layer=1, n_embd=16, n_head=2, ffn_hidden=32, sequence_length=8)
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
        print("ok", err)
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
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
        (dict(attention="xformers"), "attention"),
        (dict(norm_eps=0.0), "norm_eps"),
    ],
)
def test_bad_configs(kw, needle):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**kw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
