"""Op-by-op kernel launches and memory bytes of one training step, and the closed-form parameter
and FLOP counts (standard library only).

Private helper of ``model.costs``. Every ``led.op`` below is one operation of the step that
``model.transformer.Transformer`` runs in eager PyTorch: an aten op, or a Triton kernel of
``kernels`` for the ops cfg.kernels names ("triton": all of them). The sequence was read off
the dispatcher (``model.traffic.measure_step``, which the tests compare against op by op) and is
written here per module, forward then backward. Bytes follow the same convention as that
counter: each op reads every tensor input and writes every tensor output in full (an in-place
op's tensor is read and written); views, reshapes and bare allocations move nothing and launch
nothing.

Scope: exact (tested op by op) for the CPU op sequence of the pinned torch, in fp32 and under CPU
bf16 autocast, and for the Triton RMSNorm/SwiGLU kernels under the interpreter. On CUDA the SDPA
kernel is another aten op (flash or memory-efficient attention, with a few extra scalar outputs)
and flash-attn (attention="flash") is a custom op. CUDA autocast should insert the same casts
(where its op lists differ from the CPU's, e.g. layer_norm or pow in fp32, the inputs here are fp32
already), but no GPU run has checked this.

Sizes (numbers, arrays or `model._poly.Poly`; nothing branches on their values): V vocab, L
layers, d width, H heads, G kv heads, hd head dim, kvd = G*hd, f MLP width, T sequence, B micro-
batch, N = B*T tokens. Byte widths: p = 4 (fp32 parameters, residual stream, norms, statistics,
softmax/loss), a = compute dtype (2 under bf16/fp16 autocast, else 4).
"""

from __future__ import annotations

from types import SimpleNamespace

from model._poly import Ledger
from model.config import kernel_ops

CLASSES = (
    "matmul",  # linear layers: mm/addmm forward, grad-input and grad-weight mm, bias grad sums
    "norm",  # RMSNorm / LayerNorm forward and backward
    "activation",  # SwiGLU / GELU forward and backward
    "attention",  # RoPE, GQA K/V repeat and its reduction, the SDPA kernel, the q/k/v grad concat
    "embedding_head",  # token/position embeddings and their grads, log-softmax + NLL loss
    "optimizer",  # the optimizer step
    "cast",  # dtype conversions of autocast and of the fp32 islands (RoPE, SwiGLU, logits)
    "other",  # residual adds and grad sums of fan-outs, dropout, gradient accumulation
)
# The fused SDPA kernel as dispatched on CPU (CUDA: _scaled_dot_product_{flash,efficient}_attention)
SDPA_FWD = "aten::_scaled_dot_product_flash_attention_for_cpu"
SDPA_BWD = "aten::_scaled_dot_product_flash_attention_for_cpu_backward"


def dims(V, L, d, H, G, f, T, B, hd, gqa, kv_copy, progs, tie, bias, chunks=1, crows=None, *,
         arch, kernels, **impl):  # fmt: skip
    """The sizes and switches every term reads: numbers, or `Poly` variables (module docstring).

    gqa: 1 if G < H; kv_copy: 1 if also G > 1 and T > 1; progs: rows of the fused RMSNorm's dw
    partials; chunks, crows: row chunks of the fused linear + cross-entropy and the rows of its
    first chunk (`flce_chunks`). impl: autocast (bool), native_flash (flash-attn, 16-bit),
    dropout (bool: p > 0). Switches per op of ours (llama only): fnorm (RMSNorm, the residual adds
    fused into it), fswiglu, fce (the LM head's linear + cross-entropy).
    """
    a = 2 if impl.get("autocast") else 4
    ours = kernel_ops(kernels) if arch == "llama" else frozenset()
    return SimpleNamespace(
        V=V, L=L, d=d, H=H, G=G, f=f, T=T, B=B, N=B * T, hd=hd, kvd=G * hd, tie=tie, bias=bias,
        gqa=gqa, kv_copy=kv_copy, progs=progs, chunks=chunks,
        crows=B * T if crows is None else crows, llama=arch == "llama", a=a, p=4,
        fnorm="rmsnorm" in ours, fswiglu="swiglu" in ours, fce="linear_ce" in ours,
        ac=1 if a == 2 else 0,
        flash=1 if impl.get("native_flash") and a == 2 else 0, drop=1 if impl.get("dropout") else 0,
    )  # fmt: skip


def _cast(led, c, calls, numel, frm, to) -> None:
    """``_to_copy`` of a tensor of ``numel`` elements from ``frm`` to ``to`` bytes each."""
    led.op("cast", "aten::_to_copy", calls, numel * frm, numel * to)


# ----------------------------------------------------------------------------- linear layers
def linear(led, c, n, i, o, *, x32, bias, fwd: bool, tail=1) -> None:
    """`n` nn.Linear(i -> o) on N rows; `x32`: input is fp32 (autocast casts it); `bias` 0/1;
    `tail` 0: stop after the weight cast (a recompute that needs only the saved operands)."""
    a, N, ac = c.a, c.N, c.ac
    if fwd:
        _cast(led, c, n * ac * x32, N * i, 4, 2)  # autocast: an fp32 input to the compute dtype
        _cast(led, c, n * ac, i * o, 4, 2)  # ... the weight
        _cast(led, c, n * ac * bias * tail, o, 4, 2)  # ... and the bias
        led.op("matmul", "aten::mm", n * (1 - bias) * tail, a * N * i, a * i * o, a * N * o)
        led.op("matmul", "aten::addmm", n * bias * tail, a * o, a * N * i, a * i * o, a * N * o)
        return
    led.op("matmul", "aten::mm", n, a * N * o, a * i * o, a * N * i)  # grad input = g @ W
    led.op("matmul", "aten::mm", n, a * N * o, a * N * i, a * i * o)  # grad weight = g^T @ x
    led.op("matmul", "aten::sum", n * bias, a * N * o, a * o)  # grad bias = sum of g over rows
    _cast(led, c, n * ac, i * o, 2, 4)  # autocast backward: grads back to fp32
    _cast(led, c, n * ac * bias, o, 2, 4)
    _cast(led, c, n * ac * x32, N * i, 2, 4)


# ------------------------------------------------------------------------------------- norms
def norm(led, c, n, *, fwd: bool) -> None:
    """`n` applications of the block norm to the fp32 residual stream (N x d)."""
    N, d, p = c.N, c.d, c.p
    Nd = N * d
    if not c.llama:  # nn.LayerNorm: one fused aten op each way; bias iff cfg.bias
        b = c.bias
        if fwd:  # reads x, w, b; writes y, mean, rstd
            led.op("norm", "aten::native_layer_norm", n, p * (2 * Nd + d + d * b + 2 * N))
        else:  # reads dy, x, mean, rstd, w, b; writes dx, dw, db
            nb = p * (3 * Nd + 2 * N + 2 * d + 2 * d * b)
            led.op("norm", "aten::native_layer_norm_backward", n, nb)
        return
    if c.fnorm:  # kernels/rmsnorm.py
        if fwd:  # reads x, w; writes y, rstd
            led.op("norm", "triton::_rmsnorm_fwd_kernel", n, p * (2 * Nd + d + N))
            return
        # dx kernel reads dy, x, w, rstd, writes dx and one fp32 dw partial row per program
        led.op("norm", "triton::_rmsnorm_bwd_dx_kernel", n, p * (3 * Nd + d + N + c.progs * d))
        led.op("norm", "triton::_rmsnorm_bwd_dw_kernel", n, p * (d + c.progs * d))  # sum rows
        return
    # kernels.reference.rms_norm_ref: x * rsqrt(mean(x^2) + eps) * w, all fp32
    if fwd:
        led.op("norm", "aten::pow", n, p * Nd, p * Nd)  # x^2
        led.op("norm", "aten::mean", n, p * Nd, p * N)  # mean over d
        led.op("norm", "aten::add", n, p * N, p * N)  # + eps
        led.op("norm", "aten::rsqrt", n, p * N, p * N)
        led.op("norm", "aten::mul", n, p * Nd, p * N, p * Nd)  # x * rstd
        led.op("norm", "aten::mul", n, p * Nd, p * d, p * Nd)  # * w
        return
    led.op("norm", "aten::mul", n, p * Nd, p * Nd, p * Nd)  # dy * (x * rstd), for dw
    led.op("norm", "aten::mul", n, p * Nd, p * d, p * Nd)  # dy * w
    led.op("norm", "aten::sum", n, p * Nd, p * d)  # dw = sum over rows
    led.op("norm", "aten::mul", n, p * Nd, p * Nd, p * Nd)  # g * x, for d rstd
    led.op("norm", "aten::mul", n, p * Nd, p * N, p * Nd)  # g * rstd, d x (first term)
    led.op("norm", "aten::sum", n, p * Nd, p * N)  # d rstd = sum over d
    led.op("norm", "aten::pow", n, p * N, p * N)  # rsqrt backward: rstd^3
    led.op("norm", "aten::mul", n, p * N, p * N)  # * -0.5
    led.op("norm", "aten::mul", n, p * N, p * N, p * N)  # * d rstd
    led.op("norm", "aten::div", n, p * Nd, p * Nd)  # mean backward: expand / d
    led.op("norm", "aten::pow", n, p * Nd, p * Nd)  # pow backward: x^1
    led.op("norm", "aten::mul", n, p * Nd, p * Nd)  # * 2
    led.op("norm", "aten::mul", n, p * Nd, p * Nd, p * Nd)  # * d mean
    led.op("norm", "aten::add", n, p * Nd, p * Nd, p * Nd)  # d x = both terms


def add_norm(led, c, n, *, fwd: bool, ds=1) -> None:
    """`n` fused residual add + RMSNorm (kernels/add_rmsnorm.py): the fp32 stream r plus a branch x
    in the compute dtype. Forward: reads x, r, w; writes s = x + r, y, rstd. Backward: the dx
    kernel reads dy, ds (the grad s gets from its next use; ``ds`` 0: none, the final norm's), s,
    w, rstd and writes the stream's grad, under autocast also the branch's in the compute dtype
    (same dtype: both inputs get that one tensor), and one fp32 dw partial row per program."""
    N, d, p, a = c.N, c.d, c.p, c.a
    Nd = N * d
    if fwd:
        led.op("norm", "triton::_rmsnorm_fwd_kernel", n, p * (3 * Nd + d + N) + a * Nd)
        return
    dx = p * (3 * Nd + d + N + c.progs * d) + ds * p * Nd + c.ac * a * Nd
    led.op("norm", "triton::_rmsnorm_bwd_dx_kernel", n, dx)
    led.op("norm", "triton::_rmsnorm_bwd_dw_kernel", n, p * (d + c.progs * d))


def flce_chunks(n_rows, v, itemsize, chunk_bytes=1 << 30):
    """(chunks, rows of the first chunk) of kernels.cross_entropy at N rows, vocabulary V and
    logits of `itemsize` bytes: chunks of at most `chunk_bytes` of logits
    (kernels/_cross_entropy_kernels.py, ``default_chunks``). Numbers or numpy arrays."""
    want = -(-(n_rows * v * itemsize) // chunk_bytes)
    want = want + (want < 1) * (1 - want)  # max(1, ...)
    want = want - (want > n_rows) * (want - n_rows)  # min(N, ...)
    rows = -(-n_rows // want)
    return -(-n_rows // rows), rows


# -------------------------------------------------------------------------------------- MLPs
def mlp_act(led, c, n, *, fwd: bool) -> None:
    """The MLP nonlinearity on N x f: SwiGLU (reference or fused kernel) or GELU."""
    a, p, Nf, ac = c.a, c.p, c.N * c.f, c.ac
    if not c.llama:  # F.gelu in the compute dtype
        if fwd:
            led.op("activation", "aten::gelu", n, a * Nf, a * Nf)
        else:  # reads dy, x
            led.op("activation", "aten::gelu_backward", n, 3 * a * Nf)
        return
    if c.fswiglu:  # kernels/swiglu.py, in the compute dtype
        if fwd:  # reads gate, up; writes out
            led.op("activation", "triton::_swiglu_fwd_kernel", n, 3 * a * Nf)
        else:  # reads gate, up, dout; writes dgate, dup
            led.op("activation", "triton::_swiglu_bwd_kernel", n, 5 * a * Nf)
        return
    # kernels.reference.swiglu_ref: silu(gate) * up in fp32, cast back to the input dtype
    if fwd:
        _cast(led, c, 2 * n * ac, Nf, 2, 4)  # gate, up to fp32
        led.op("activation", "aten::silu", n, p * Nf, p * Nf)
        led.op("activation", "aten::mul", n, p * Nf, p * Nf, p * Nf)  # silu(gate) * up
        _cast(led, c, n * ac, Nf, 4, 2)  # back to the compute dtype
        return
    _cast(led, c, n * ac, Nf, 2, 4)  # the incoming grad to fp32
    led.op("activation", "aten::mul", n, p * Nf, p * Nf, p * Nf)  # d silu = g * up
    led.op("activation", "aten::mul", n, p * Nf, p * Nf, p * Nf)  # d up = g * silu(gate)
    led.op("activation", "aten::silu_backward", n, p * Nf, p * Nf, p * Nf)  # d gate
    _cast(led, c, 2 * n * ac, Nf, 4, 2)  # d gate, d up back to the compute dtype


# --------------------------------------------------------------------------------- attention
def rope(led, c, n, numel, *, fwd: bool) -> None:
    """model.layers.apply_rope on a (B, T, heads, hd) tensor of `numel` elements, math in fp32."""
    p, ac, e, cs = c.p, c.ac, numel, c.p * c.T * c.hd  # cs: the (T, 1, hd) cos or sin table
    _cast(led, c, n * ac, e, 2, 4)  # .float() forward; in backward, the grad of .to(x.dtype)
    if fwd:
        led.op("attention", "aten::neg", n, p * e * 0.5, p * e * 0.5)  # -x[..., hd/2:]
        led.op("attention", "aten::cat", n, p * e, p * e)  # rotate-half
        led.op("attention", "aten::mul", n, p * e, cs, p * e)  # x * cos
        led.op("attention", "aten::mul", n, p * e, cs, p * e)  # rot * sin
        led.op("attention", "aten::add", n, p * e, p * e, p * e)
    else:
        led.op("attention", "aten::mul", n, p * e, cs, p * e)  # g * cos
        led.op("attention", "aten::mul", n, p * e, cs, p * e)  # g * sin (grad of rot)
        led.op("attention", "aten::slice_backward", n, p * e * 0.5, p * e)  # cat's grad halves
        led.op("attention", "aten::add", n, p * e, p * e, p * e)
        led.op("attention", "aten::neg", n, p * e * 0.5, p * e * 0.5)
        led.op("attention", "aten::slice_backward", n, p * e * 0.5, p * e)
        led.op("attention", "aten::add", n, p * e, p * e, p * e)
    _cast(led, c, n * ac, e, 4, 2)  # .to(x.dtype) forward; the grad of .float() backward


def attention_core(led, c, n, *, fwd: bool) -> None:
    """GQA K/V repeat (sdpa path), the fused attention kernel, and the q/k/v grad concat."""
    a, lse = c.a, 4 * c.B * c.H * c.T  # lse: fp32 log-sum-exp per (batch, head, query)
    Nd, Nk = c.N * c.d, c.N * c.kvd
    sdpa = n * (1 - c.flash)  # F.scaled_dot_product_attention (flash-style fused kernel)
    rep = sdpa * c.gqa  # k and v repeat_interleave'd to n_head heads before sdpa
    if fwd:
        led.op("attention", "aten::clone", 2 * rep, a * Nd, a * Nd)  # expand + clone, k and v
        led.op("attention", SDPA_FWD, sdpa, 4 * a * Nd + lse)  # reads q, k, v; writes O, lse
        led.op("attention", "flash_attn::fwd", n * c.flash, a * (2 * Nd + 2 * Nk) + lse)
        return
    led.op("attention", SDPA_BWD, sdpa, 8 * a * Nd + lse)  # reads dO q k v O lse; writes dq dk dv
    led.op("attention", "flash_attn::bwd", n * c.flash, a * (4 * Nd + 4 * Nk) + lse)
    led.op("attention", "aten::sum", 2 * rep, a * Nd, a * Nk)  # repeat's grad: sum the copies
    # dk, dv back in (B, T, G, hd) order are copied to be contiguous, unless G == 1 (or T == 1)
    led.op("attention", "aten::clone", 2 * rep * c.kv_copy, a * Nk, a * Nk)
    led.op("attention", "aten::cat", n, 2 * a * (Nd + 2 * Nk))  # split's grad: [dq, dk, dv]


# ----------------------------------------------------------------------------------- blocks
def _dropout(led, c, n, numel, width, *, fwd: bool) -> None:
    """F.dropout (p > 0, training): reads x, writes y and a bool mask; backward reads g, mask."""
    name = "aten::native_dropout" if fwd else "aten::native_dropout_backward"
    led.op("other", name, n * c.drop, 2 * width * numel + numel)


def _residual(led, c, n, *, fwd: bool, add=1) -> None:
    """x + branch(x): fp32 stream plus a compute-dtype branch; backward sums the two grads of x.
    With our RMSNorm the add is in the next norm (`add_norm`): only the dropout is left."""
    p, a, Nd = c.p, c.a, c.N * c.d
    _dropout(led, c, n, Nd, a, fwd=fwd)  # on the branch output
    if c.fnorm:
        return
    if fwd:
        led.op("other", "aten::add", n * add, p * Nd, a * Nd, p * Nd)
    else:
        _cast(led, c, n * c.ac, Nd, 4, 2)  # the branch's grad in the branch dtype
        led.op("other", "aten::add", n, 3 * p * Nd)  # grad via the norm + grad via the skip


def _block_norm(led, c, n, first, *, fwd: bool) -> None:
    """A block's ln_1 (`first`: how many of the `n` are the first block's) or, with first=0, its
    ln_2. With our RMSNorm each is an add_norm with the pending branch, but the first block's ln_1,
    whose stream is complete: a plain norm, and its input (the embedding) also feeds ln_2's add,
    so its backward sums two grads."""
    if not c.fnorm:
        norm(led, c, n, fwd=fwd)
        return
    norm(led, c, first, fwd=fwd)
    add_norm(led, c, n - first, fwd=fwd)
    if not fwd:
        led.op("other", "aten::add", first, 3 * c.p * c.N * c.d)


def block(led, c, n, *, fwd: bool, recompute: bool = False, first=1) -> None:
    """`n` pre-norm blocks: x + attn(norm(x)); x + mlp(norm(x)). `recompute`: the forward that
    torch.utils.checkpoint reruns in the backward, which stops once every tensor saved for the
    backward is recovered: the last residual add, and the down projection's matmul (and bias
    cast) unless a dropout mask follows it, are not rerun. `first`: how many of the `n` blocks
    are the model's first (`_block_norm`)."""
    tail = c.drop if recompute else 1
    d, kvd, f, n_up = c.d, c.kvd, c.f, n * (2 if c.llama else 1)  # n_up: w1 and w2 | c_fc
    qkv = dict(x32=1, bias=c.bias)  # c_attn reads the fp32 norm output
    proj = dict(x32=0, bias=c.bias)  # c_proj reads the compute-dtype attention output
    up = dict(x32=1, bias=c.bias * (1 - c.llama))  # SwiGLU's linears never have a bias
    down = dict(x32=0, bias=c.bias * (1 - c.llama))
    if fwd:
        _block_norm(led, c, n, first, fwd=True)  # ln_1
        linear(led, c, n, d, d + 2 * kvd, **qkv, fwd=True)
        rope(led, c, n * c.llama, c.N * d, fwd=True)  # q
        rope(led, c, n * c.llama, c.N * kvd, fwd=True)  # k
        attention_core(led, c, n, fwd=True)
        linear(led, c, n, d, d, **proj, fwd=True)
        _residual(led, c, n, fwd=True)
        _block_norm(led, c, n, 0, fwd=True)  # ln_2
        linear(led, c, n_up, d, f, **up, fwd=True)
        mlp_act(led, c, n, fwd=True)
        linear(led, c, n, f, d, **down, fwd=True, tail=tail)
        _residual(led, c, n, fwd=True, add=0 if recompute else 1)
        return
    _residual(led, c, n, fwd=False)
    linear(led, c, n, f, d, **down, fwd=False)
    mlp_act(led, c, n, fwd=False)
    linear(led, c, n_up, d, f, **up, fwd=False)
    led.op("other", "aten::add", n * c.llama, 3 * c.p * c.N * d)  # w1 and w2 input grads
    _block_norm(led, c, n, 0, fwd=False)  # ln_2
    _residual(led, c, n, fwd=False)
    linear(led, c, n, d, d, **proj, fwd=False)
    attention_core(led, c, n, fwd=False)
    rope(led, c, n * c.llama, c.N * kvd, fwd=False)
    rope(led, c, n * c.llama, c.N * d, fwd=False)
    linear(led, c, n, d, d + 2 * kvd, **qkv, fwd=False)
    _block_norm(led, c, n, first, fwd=False)  # ln_1


def embedding(led, c, *, fwd: bool) -> None:
    """Token embedding (+ gpt2's learned positions, + dropout); backward with the tied grad sum."""
    p, N, d, V, T, gpt2 = c.p, c.N, c.d, c.V, c.T, 1 - c.llama
    if fwd:
        led.op("embedding_head", "aten::embedding", 1, p * V * d, 8 * N, p * N * d)  # int64 ids
        led.op("embedding_head", "aten::add", gpt2, p * N * d, p * T * d, p * N * d)  # + wpe[:T]
        _dropout(led, c, 1, N * d, p, fwd=True)
        return
    _dropout(led, c, 1, N * d, p, fwd=False)
    led.op("embedding_head", "aten::sum", gpt2, p * N * d, p * T * d)  # wpe grad: sum over batch
    led.op("embedding_head", "aten::slice_backward", gpt2, p * T * d, p * T * d)  # into wpe
    led.op("embedding_head", "aten::embedding_dense_backward", 1, p * N * d, 8 * N, p * V * d)
    led.op("embedding_head", "aten::add", c.tie, 3 * p * V * d)  # tied: embedding + head grads


def final_norm(led, c, *, fwd: bool) -> None:
    """ln_f: with our RMSNorm an add_norm of the last block's pending MLP output (no grad from a
    later use of the stream: ds 0), else the plain norm of the complete stream."""
    if c.fnorm:
        add_norm(led, c, 1, fwd=fwd, ds=0)
    else:
        norm(led, c, 1, fwd=fwd)


def fused_ce(led, c, *, fwd: bool) -> None:
    """kernels/cross_entropy.py's linear + cross-entropy in `c.chunks` chunks of rows (`c.crows`
    in the first): per chunk the logits mm, the loss/grad kernel (reads the logits, the targets,
    writes the rows' losses, the grad over the logits), dh = dz W written into its rows of dh (an
    out= mm: read and written), dW = dz^T h accumulated (fp32 matmuls: addmm_ into the first
    chunk's; 16-bit: each chunk's mm added to an fp32 buffer). The forward leaves dh, dW ready;
    the backward multiplies them by the incoming grad."""
    p, a, ac, N, d, V, K, C1 = c.p, c.a, c.ac, c.N, c.d, c.V, c.chunks, c.crows
    if not fwd:
        led.op("embedding_head", "aten::ones_like", 1, p, p)  # backward's seed d loss = 1
        led.op("matmul", "aten::mul", 1, p * N * d, p, p * N * d)  # dh * d loss
        led.op("matmul", "aten::mul", 1, p * V * d, p, p * V * d)  # dW * d loss
        return
    _cast(led, c, ac, N * d, 4, 2)  # h and W to the compute dtype
    _cast(led, c, ac, V * d, 4, 2)
    led.add("matmul", "aten::mm", K, a * (N * d + K * V * d + N * V))  # z = h W^T per chunk
    led.add("embedding_head", "triton::_ce_fwd_bwd_kernel", K, a * N * V + 12 * N)
    led.add("matmul", "aten::mm", K, a * (N * V + K * V * d + 2 * N * d))  # dh rows = dz W
    rest = N - C1  # rows after the first chunk
    fp = 1 - ac
    mm_rows = fp * C1 + ac * N  # rows of the dW mms: the first chunk's, or all chunks'
    led.add("matmul", "aten::mm", fp + ac * K, a * (mm_rows * (V + d) + (fp + ac * K) * V * d))
    led.add("matmul", "aten::addmm_", fp * (K - 1), fp * p * (rest * (V + d) + 2 * (K - 1) * V * d))
    led.add("matmul", "aten::add_", ac * (K - 1), ac * 10 * (K - 1) * V * d)  # fp32 += 16-bit mm
    _cast(led, c, ac, V * d, 2, 4)  # dW to fp32 (the accumulator, or at the end)
    _cast(led, c, ac, N * d, 2, 4)  # dh to fp32
    led.op("embedding_head", "aten::sum", 1, 4 * N, 4)  # loss = sum of the rows' shares


def head(led, c, *, fwd: bool) -> None:
    """Final norm, then the LM head and the loss: our fused linear + cross-entropy (`fused_ce`),
    or the head's matmul, fp32 logits and cross-entropy (log-softmax + NLL), and their backward."""
    p, N, NV = c.p, c.N, c.N * c.V
    if fwd:
        final_norm(led, c, fwd=True)
        if c.fce:
            fused_ce(led, c, fwd=True)
            return
        linear(led, c, 1, c.d, c.V, x32=1, bias=0, fwd=True)
        _cast(led, c, c.ac, NV, 2, 4)  # logits.float()
        led.op("embedding_head", "aten::_log_softmax", 1, p * NV, p * NV)
        led.op("embedding_head", "aten::nll_loss_forward", 1, p * NV, 8 * N, 2 * p)
        return
    if c.fce:
        fused_ce(led, c, fwd=False)
    else:
        led.op("embedding_head", "aten::ones_like", 1, p, p)  # backward's seed d loss = 1
        led.op("embedding_head", "aten::nll_loss_backward", 1, 2 * p + 2 * p * NV + 8 * N)
        led.op("embedding_head", "aten::_log_softmax_backward_data", 1, 3 * p * NV)
        _cast(led, c, c.ac, NV, 4, 2)
        linear(led, c, 1, c.d, c.V, x32=1, bias=0, fwd=False)
    final_norm(led, c, fwd=False)


# ------------------------------------------------------------------------------------- step
def n_tensors(c):
    """Parameter tensors of the model (a tied head shares the embedding's)."""
    if c.llama:  # ln_1, c_attn, c_proj, ln_2, w1, w2, c_proj (+ 2 attention biases); wte, ln_f
        return c.L * (7 + 2 * c.bias) + 2 + (1 - c.tie)
    # ln_1, c_attn, c_proj, ln_2, c_fc, c_proj (+ a bias each); wte, wpe, ln_f (+ bias)
    return c.L * (6 + 6 * c.bias) + 3 + c.bias + (1 - c.tie)


def optimizer(led, c, params, kind: str, averages, persistent) -> None:
    """One optimizer step over `params` fp32 elements, then zeroing the grads if `persistent`."""
    p, nt = c.p, n_tensors(c)
    if kind == "torch_adamw":  # torch.optim.AdamW(foreach=False), weight_decay != 0, per tensor:
        led.add("optimizer", "aten::add_", nt, 2 * p * nt)  # step += 1 (0-d tensor)
        led.add("optimizer", "aten::mul_", nt, 2 * p * params)  # decoupled decay p *= 1 - lr*wd
        led.add("optimizer", "aten::lerp_", nt, 3 * p * params)  # m += (1 - beta1) (g - m)
        led.add("optimizer", "aten::mul_", nt, 2 * p * params)  # v *= beta2
        led.add("optimizer", "aten::addcmul_", nt, 3 * p * params)  # v += (1 - beta2) g g
        led.add("optimizer", "aten::sqrt", nt, 2 * p * params)  # sqrt(v)
        led.add("optimizer", "aten::div", nt, 2 * p * params)  # / sqrt(bias correction 2)
        led.add("optimizer", "aten::add_", nt, 2 * p * params)  # + eps
        led.add("optimizer", "aten::addcdiv_", nt, 4 * p * params)  # p -= lr' m / denom
        led.add("optimizer", "aten::zero_", nt * persistent, 2 * p * params * persistent)
    elif kind == "fused_adamw":  # kernels.adamw.FusedAdamW's Triton path, 2 groups, clipping on;
        # bytes: each kernel's reads and writes (the tests compare only its launches)
        # grads that are not yet views of the flat buffers are copied in (set_to_none zeroing)
        led.add(
            "optimizer", "aten::copy_", nt * (1 - persistent), 3 * p * params * (1 - persistent)
        )
        led.add("optimizer", "triton::_sumsq_kernel", 2, p * params)  # grad-norm partial sums
        led.add("optimizer", "triton::_finalize_kernel", 1, 0)  # norm and clip factor (scalars)
        # one pass: reads p, g, m, v (+ each average), writes p, m, v (+ each average)
        led.add("optimizer", "triton::_adamw_kernel", 2, p * params * (7 + 2 * averages))
        led.add("optimizer", "aten::zero_", 2 * persistent, 2 * p * params * persistent)
    elif kind != "none":
        raise ValueError(f"unknown optimizer {kind!r}; choose fused_adamw, torch_adamw or none")


def step(c, params, *, acc_steps, ckpt, kind, averages, persistent, detail=False) -> Ledger:
    """The Ledger of one optimizer step: `acc_steps` micro-steps (forward, recompute of the
    blocks' forward when `ckpt`, backward), gradient accumulation, the optimizer. `persistent`:
    grads are kept between steps and zeroed in place (zero_grad(set_to_none=False)), so every
    micro-step adds into them; else they start as None and the first backward just stores them.
    """
    led = Ledger(CLASSES, detail)
    led.mult = acc_steps
    embedding(led, c, fwd=True)
    block(led, c, c.L, fwd=True)
    head(led, c, fwd=True)
    head(led, c, fwd=False)
    block(led, c, c.L * ckpt, fwd=True, recompute=True, first=ckpt)  # activation checkpointing
    block(led, c, c.L, fwd=False)
    embedding(led, c, fwd=False)
    led.mult = 1
    adds = acc_steps - 1 + persistent  # AccumulateGrad's in-place add_ into an existing .grad
    led.add("other", "aten::add_", adds * n_tensors(c), adds * 3 * c.p * params)
    optimizer(led, c, params, kind, averages, persistent)
    return led


# --------------------------------------------------------------- closed forms: params, FLOPs
def flops(V, L, d, H, G, f, T, B, mlp_mats, params, wpe, nonembed, ckpt=0, drop=0) -> dict:
    """FLOPs of one micro-step of B sequences under every convention, plus the matmul split."""
    hd, N, kvd = d // H, B * T, G * (d // H)
    lin_layers = 2 * N * L * (d * (d + 2 * kvd) + d * d + mlp_mats * d * f)
    lin_head = 2 * N * d * V
    att = 4 * B * H * T * T * hd * L
    # recompute (checkpointing): the blocks' forward but the last matmul (see `block`)
    matmul = 3 * (lin_layers + lin_head) + ckpt * (lin_layers - (1 - drop) * 2 * N * L * f * d)
    other = 3 * att + ckpt * att
    ch_layer = 2 * T * d * (d + 2 * kvd) + 4 * T * T * d + 3 * H * T * T + 2 * T * d * d
    return {
        "exact": matmul + other,
        "matmul": matmul,
        "other": other,
        "kaplan": 6 * nonembed * N,
        "porian": 6 * (nonembed + V * d) * N,
        "chinchilla": 3 * B * (4 * T * V * d + L * (ch_layer + 2 * T * mlp_mats * d * f)),
        "palm": (6 * (params - wpe) + 12 * L * H * hd * T) * N,
    }


def scores(L, H, T, B, ckpt=0):
    """Elements of the T x T attention scores one micro-step forms: L*B*H*T^2 per pass, for the
    forward, the backward (counted as one pass: it re-forms the scores and their gradients) and the
    recomputed forward under checkpointing. Causal masking is not discounted (as in `flops`). The
    work per score (scale, mask, exp, max, sum) does not shrink with the head width as the FLOPs
    do, so narrow heads at long sequences cost more than the FLOPs say. Equals the elements of
    softmax and softmax-backward on the math SDPA path (tests/model/test_costs.py)."""
    return (2 + ckpt) * L * B * H * T * T


def params(V, L, d, H, G, f, T, tie, bias, llama) -> dict:
    """Parameter counts; `llama` is 1 for arch "llama", 0 for "gpt2" (numbers or arrays)."""
    kvd = G * (d // H)
    attn = d * (d + 2 * kvd) + d * d + bias * (d + 2 * kvd + d)  # c_attn, c_proj
    mlp = llama * 3 * d * f + (1 - llama) * (2 * d * f + bias * (f + d))  # SwiGLU | GELU MLP
    norms = llama * 2 * d + (1 - llama) * 2 * d * (1 + bias)  # ln_1, ln_2
    final = llama * d + (1 - llama) * d * (1 + bias)  # ln_f
    wpe = (1 - llama) * T * d
    layer, embed, head = attn + mlp + norms, V * d, V * d * (1 - tie)  # tied: wte's matrix
    nonembed = L * layer + final
    total = nonembed + embed + head + wpe
    return dict(total=total, nonembed=nonembed, embed=embed, head=head, wpe=wpe, layer=layer)
