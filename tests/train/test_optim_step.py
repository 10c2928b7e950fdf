"""build_optimizer grouping (decay on matrices only), train_step accumulation/clipping, evaluate."""

import torch

from model.config import PRESETS
from model.transformer import Transformer
from train.optim import build_optimizer, param_groups
from train.step import evaluate, train_step


def _model(tie: bool):
    torch.manual_seed(0)
    return Transformer(PRESETS["tiny"].replace(tie_embeddings=tie, n_layer=1))


def test_decay_groups_match_the_seed():
    for tie in (False, True):
        m = _model(tie)
        decay, no_decay = param_groups(m, 0.1)
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        d = {id(p) for p in decay["params"]}
        nd = {id(p) for p in no_decay["params"]}
        assert not d & nd and len(d) + len(nd) == len(list(m.parameters()))
        emb = [mod.weight for mod in m.modules() if isinstance(mod, torch.nn.Embedding)]
        assert emb and all(id(w) in nd for w in emb)  # embeddings (and a tied head) never decay
        assert all(p.dim() == 2 for p in decay["params"])  # only matrices
        assert all(p.dim() == 1 for p in no_decay["params"] if id(p) not in {id(w) for w in emb})
        lin = [mod.weight for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
        assert sum(id(w) in d for w in lin) == len(lin) - (1 if tie else 0)


def test_train_step_accumulates_and_clips():
    m = _model(False)
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 16), generator=g)
    y = torch.randint(0, 256, (4, 16), generator=g)
    # two half micro-batches give the mean loss of the whole batch
    _, full = m(x, targets=y)
    before = [p.detach().clone() for p in m.parameters()]
    st = train_step(m, opt, [(x[:2], y[:2]), (x[2:], y[2:])], lr=1e-3, grad_clip=1e-3)
    assert abs(float(st.loss) - float(full.detach())) < 1e-5
    assert float(st.grad_norm) > 1e-3  # measured before clipping
    assert opt.param_groups[0]["lr"] == 1e-3
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    # grads stay zeroed views of the optimizer's flat buffer (the next backward adds in place)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    v = evaluate(m, [(x, y)])
    assert isinstance(v, float) and m.training
