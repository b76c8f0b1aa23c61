"""The shared Adam arithmetic (gnlorp/optim/adam_math.py) on its own: each form against torch.optim.AdamW,
the foreach form against the one-tensor form bit for bit, and 8-bit moments against float ones."""

import math

import pytest
import torch

from gnlorp.optim import adam_math

BETAS, EPS = (0.9, 0.999), 1e-8


def _tensors(seed=0, shape=(64, 80)):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g)
    grads = [torch.randn(shape, generator=g) for _ in range(4)]
    return p, grads


def _torch_adamw(p, grads, lr, wd, eps=EPS):
    p = p.clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=lr, betas=BETAS, eps=eps, weight_decay=wd, foreach=False)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_torch_form_is_torch_adamw(wd):
    p0, grads = _tensors()
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    step = torch.zeros((), dtype=torch.float32)
    for g in grads:
        step += 1
        adam_math.adamw_step(p, g, m, v, step, lr=1e-2, betas=BETAS, eps=EPS, weight_decay=wd)
    # the bias corrections from a float32 step tensor (per-row counts need one) round unlike torch's Python
    # float: 3e-7 in weights that moved 4e-2
    torch.testing.assert_close(p, _torch_adamw(p0, grads, lr=1e-2, wd=wd), rtol=1e-5, atol=1e-6)


def test_torch_form_per_row_steps_restart_bias_correction_per_row():
    """A (rows, 1) step count whose row 0 restarts is, on that row, a fresh AdamW."""
    p0, grads = _tensors(shape=(2, 8))
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    step = torch.zeros((2, 1))
    adam_math.adamw_step(p, grads[0], m, v, step.add_(1), lr=1e-2, betas=BETAS, eps=EPS, weight_decay=0.0)
    step[0] = 0
    m[0], v[0] = 0, 0
    start = p.clone()
    adam_math.adamw_step(p, grads[1], m, v, step.add_(1), lr=1e-2, betas=BETAS, eps=EPS, weight_decay=0.0)
    torch.testing.assert_close(p[0], _torch_adamw(start[0], [grads[1][0]], lr=1e-2, wd=0.0), rtol=1e-5, atol=1e-6)


def test_galore_form_is_torch_adamw_without_eps_and_decay():
    """The galore form differs from torch's only by where eps sits and when the decay applies: with eps -> 0 and
    no decay it is AdamW; with them it is the written-out formula."""
    p0, grads = _tensors()
    lr, wd, eps = 1e-2, 0.1, 1e-6
    for e, w in ((0.0, 0.0), (eps, wd)):
        p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
        ref, rm, rv = p0.double(), torch.zeros_like(p0).double(), torch.zeros_like(p0).double()
        for t, g in enumerate(grads, start=1):
            direction, step_size = adam_math.adam_float_step(g, m, v, t=t, lr=lr, betas=BETAS, eps=e)
            p.add_(direction, alpha=-step_size)
            adam_math.decay_after_update(p, lr, w)
            rm = BETAS[0] * rm + (1 - BETAS[0]) * g.double()
            rv = BETAS[1] * rv + (1 - BETAS[1]) * g.double() ** 2
            size = lr * math.sqrt(1 - BETAS[1] ** t) / (1 - BETAS[0] ** t)
            ref = (ref - size * rm / (rv.sqrt() + e)) * (1 - lr * w)
        torch.testing.assert_close(p, ref.float(), rtol=1e-5, atol=1e-6)
        if w == 0.0:
            torch.testing.assert_close(p, _torch_adamw(p0, grads, lr=lr, wd=0.0, eps=0.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("correct_bias", [True, False])
def test_foreach_form_is_the_one_tensor_form_bit_for_bit(correct_bias):
    ps, grads = zip(*(_tensors(seed=s, shape=(7 + s, 5)) for s in range(3)))
    one = [p.clone() for p in ps]
    many = [p.clone() for p in ps]
    moments_one = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ps]
    moments_many = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ps]
    kw = dict(lr=1e-2, betas=BETAS, eps=1e-6, correct_bias=correct_bias)
    for t in range(1, 5):
        for p, gs, (m, v) in zip(one, grads, moments_one):
            direction, step_size = adam_math.adam_float_step(gs[t - 1], m, v, t=t, **kw)
            p.add_(direction, alpha=-step_size)
            adam_math.decay_after_update(p, 1e-2, 0.1)
        adam_math.adam_float_foreach_step(many, [gs[t - 1] for gs in grads], [m for m, _ in moments_many],
                                          [v for _, v in moments_many], t=t, weight_decay=0.1, **kw)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_8bit_moments_follow_float_moments():
    pytest.importorskip("bitsandbytes.functional")
    from gnlorp.optim.bnb import adam_qmaps

    p0, grads = _tensors(shape=(64, 64))
    qmaps = adam_qmaps(torch.device("cpu"), {})
    blocks = math.ceil(p0.numel() / adam_math.BLOCKSIZE)
    codes = [torch.zeros_like(p0, dtype=torch.uint8) for _ in range(2)]
    absmax = [torch.zeros(blocks) for _ in range(2)]
    p8, p32, m, v = p0.clone(), p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        adam_math.adam_8bit_step(g.contiguous(), p8, *codes, absmax1=absmax[0], absmax2=absmax[1], qmaps=qmaps, t=t,
                                 lr=1e-3, betas=BETAS, eps=1e-6)
        direction, step_size = adam_math.adam_float_step(g, m, v, t=t, lr=1e-3, betas=BETAS, eps=1e-6)
        p32.add_(direction, alpha=-step_size)
    assert (p8 - p32).abs().max() < 0.05 * (p32 - p0).abs().max()
    m8 = adam_math.dequantize_blockwise(codes[0], absmax[0], qmaps[0], p0)
    assert (m8 - m).abs().max() < 0.02 * m.abs().max()
    # quantize then dequantize is the identity up to one quantization step
    q, a = torch.empty_like(codes[0]), torch.empty_like(absmax[0])
    adam_math.quantize_blockwise(m, q, a, qmaps[0])
    assert torch.equal(q, codes[0]) or (adam_math.dequantize_blockwise(q, a, qmaps[0], p0) - m).abs().max() < 0.02 * m.abs().max()
