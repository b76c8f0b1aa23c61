"""GaLoreAdamW against the galore-torch oracle, the 8-bit path against 32-bit, state round trips,
layer-wise accumulation, and NaN handling."""

import io
import math

import pytest
import torch
from torch import nn

from gnlorp.optim import (
    PROJ_TYPES,
    GaLoreAdamW,
    GaLoreAdamW8bit,
    LayerwiseOptimizer,
    NonFiniteGradientError,
    compute_projection,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    # one wide (m < n) and one tall (m > n) matrix, so both projection sides are exercised
    return nn.Sequential(nn.Linear(48, 24), nn.Tanh(), nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 3))


def _groups(model, rank, proj_type, gap, scale):
    mats = [model[0].weight, model[2].weight]
    rest = [p for p in model.parameters() if all(p is not m for m in mats)]
    return [{"params": rest}, {"params": mats, "rank": rank, "update_proj_gap": gap, "scale": scale, "proj_type": proj_type}]


def _train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 48, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("proj_type", PROJ_TYPES)
def test_matches_galore_torch_for_30_steps(proj_type, monkeypatch):
    galore_torch = pytest.importorskip("galore_torch")
    from gnlorp.optim.projector import canonical_signs

    real_svd = torch.linalg.svd

    def svd(A, full_matrices=True):  # the oracle's SVD with our sign convention (projector.canonical_signs)
        U, S, Vh = real_svd(A, full_matrices=full_matrices)
        U, Vh = canonical_signs(U, Vh)
        return U, S, Vh

    monkeypatch.setattr(torch.linalg, "svd", svd)
    ours, ref = _mlp(), _mlp()
    kw = dict(rank=4, proj_type=proj_type, gap=10, scale=0.5)  # gap 10: three projector refreshes in 30 steps
    opt = GaLoreAdamW(_groups(ours, **kw), lr=3e-3, weight_decay=0.01)
    opt_ref = galore_torch.GaLoreAdamW(_groups(ref, **kw), lr=3e-3, weight_decay=0.01)
    _train(ours, opt, 30)
    _train(ref, opt_ref, 30)
    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), _mlp().parameters()))
    assert moved > 1e-2, "the comparison would be vacuous if nothing moved"
    diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), ref.parameters()))
    assert diff <= 1e-5


@pytest.mark.parametrize("proj_type", PROJ_TYPES)
def test_with_lapacks_signs_matches_galore_torch_as_published_for_30_steps(proj_type):
    """svd_signs="lapack": galore-torch's own trajectory (its SVD untouched), three refreshes in 30 steps."""
    galore_torch = pytest.importorskip("galore_torch")
    ours, ref = _mlp(), _mlp()
    kw = dict(rank=4, proj_type=proj_type, gap=10, scale=0.5)
    groups = _groups(ours, **kw)
    groups[1]["svd_signs"] = "lapack"
    opt = GaLoreAdamW(groups, lr=3e-3, weight_decay=0.01)
    opt_ref = galore_torch.GaLoreAdamW(_groups(ref, **kw), lr=3e-3, weight_decay=0.01)
    _train(ours, opt, 30)
    _train(ref, opt_ref, 30)
    diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), ref.parameters()))
    assert diff <= 1e-5
    canonical = _mlp()  # and the default convention does move away from it (the option is not a no-op)
    _train(canonical, GaLoreAdamW(_groups(canonical, **kw), lr=3e-3, weight_decay=0.01), 30)
    assert max((a - b).abs().max().item() for a, b in zip(canonical.parameters(), ref.parameters())) > 1e-4


def test_no_rank_group_is_adamw():
    """Without a rank our optimizer is AdamW. torch.optim.AdamW decays before the update (weight decay 0
    removes that) and adds eps after the bias correction (a tiny eps removes that)."""
    a, b = _mlp(), _mlp()
    _train(a, GaLoreAdamW(a.parameters(), lr=1e-3, eps=1e-12), 10)
    _train(b, torch.optim.AdamW(b.parameters(), lr=1e-3, eps=1e-12, weight_decay=0.0), 10)
    assert max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters())) < 1e-6


def test_update_is_low_rank_within_a_period():
    """Within one refresh period the accumulated change of W lies in the rank-r subspace (paper's I J)."""
    model = _mlp()
    w0 = model[0].weight.detach().clone()  # 24 x 48: std projects on the left (m < n)
    opt = GaLoreAdamW(_groups(model, rank=3, proj_type="std", gap=100, scale=1.0), lr=1e-2)
    _train(model, opt, 12)
    s = torch.linalg.svdvals(model[0].weight.detach() - w0)
    assert s[3] < 1e-5 * s[0]
    assert s[2] > 1e-3 * s[0]


@pytest.mark.parametrize("shape", [(24, 48), (128, 256)])  # 1152 elements (< 4096) and 32768
def test_8bit_step_close_to_32bit(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    steps = {}
    for bits in (32, 8):
        p = nn.Parameter(w.clone())
        opt = GaLoreAdamW([{"params": [p], "rank": 8, "update_proj_gap": 50, "scale": 1.0}], lr=1e-2, eps=1e-8,
                          optim_bits=bits)
        g = torch.Generator().manual_seed(3)
        for i in range(5):  # build up some moment history first, then compare the step after it
            p.grad = torch.randn(*shape, generator=g)
            before = p.detach().clone()
            opt.step()
        steps[bits] = p.detach() - before
    rel = (steps[8] - steps[32]).norm() / steps[32].norm()
    assert steps[32].norm() > 0
    assert rel < 0.05


def test_8bit_moments_are_uint8_with_block_scales():
    p = nn.Parameter(torch.randn(128, 256))
    opt = GaLoreAdamW8bit([{"params": [p], "rank": 16}], lr=1e-3)
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    # 128 x 256 (m < n): std projects on the left, so R = P^T G is r x n
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg"].shape == (16, 256)
    assert st["absmax1"].numel() == math.ceil(16 * 256 / 256)


@pytest.mark.parametrize("bits", [32, 8])
def test_state_dict_round_trip_weights_only(bits):
    model = _mlp()
    opt = GaLoreAdamW(_groups(model, rank=4, proj_type="full", gap=5, scale=1.0), lr=1e-3, optim_bits=bits,
                      min_8bit_size=64)
    _train(model, opt, 7)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # projectors are plain tensors, not pickled objects

    clone = _mlp()
    clone.load_state_dict(ckpt["model"])
    opt2 = GaLoreAdamW(_groups(clone, rank=4, proj_type="full", gap=5, scale=1.0), lr=1e-3, optim_bits=bits,
                       min_8bit_size=64)
    opt2.load_state_dict(ckpt["opt"])
    assert torch.equal(opt2.state[clone[0].weight]["proj_left"], opt.state[model[0].weight]["proj_left"])
    _train(model, opt, 6, seed=9)  # continue both across a refresh (step 10)
    _train(clone, opt2, 6, seed=9)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_layerwise_with_accumulation_equals_normal_mode():
    accum, micro = 4, 8
    normal, layerwise = _mlp(), _mlp()
    kw = dict(rank=4, proj_type="std", gap=1, scale=1.0)  # refresh every step: the projector sees the summed gradient
    opt_n = GaLoreAdamW(_groups(normal, **kw), lr=1e-2)
    opt_l = LayerwiseOptimizer(GaLoreAdamW(_groups(layerwise, **kw), lr=1e-2), accumulation_steps=accum)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 48, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(micro)]
    for i, (x, y) in enumerate(batches):
        (nn.functional.cross_entropy(normal(x), y) / accum).backward()
        if (i + 1) % accum == 0:
            opt_n.step()
            opt_n.zero_grad()
        (nn.functional.cross_entropy(layerwise(x), y) / accum).backward()
        opt_l.step()
    assert all(p.grad is None for p in layerwise.parameters()), "layer-wise mode frees every gradient"
    assert opt_l.state[layerwise[0].weight]["step"] == micro // accum
    diff = max((a - b).abs().max().item() for a, b in zip(normal.parameters(), layerwise.parameters()))
    assert diff <= 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(normal.parameters(), _mlp().parameters())) > 1e-3


def test_nan_gradient_names_the_parameter():
    model = _mlp()
    opt = GaLoreAdamW(_groups(model, rank=4, proj_type="std", gap=10, scale=1.0), lr=1e-3)
    opt.set_param_names(model.named_parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[2].weight.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"2\.weight"):
        opt.step()


def test_randomized_svd_captures_the_dominant_subspace_and_keeps_global_rng():
    torch.manual_seed(0)
    low = torch.randn(200, 8) @ torch.randn(8, 300)  # rank 8 + small noise: the top-8 subspace is well defined
    g = low + 1e-3 * torch.randn(200, 300)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    P, _ = compute_projection(g, 8, "left", svd="randomized", seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after), "the randomized sketch must not consume the training RNG"
    P_exact, _ = compute_projection(g, 8, "left", svd="exact")
    captured = (P.T @ g).norm() ** 2 / (P_exact.T @ g).norm() ** 2
    assert captured > 0.999


def test_auto_svd_is_randomized_only_at_ranks_up_to_an_eighth_of_the_smaller_side():
    from gnlorp.optim.projector import choose_svd

    assert choose_svd((384, 1536), 8, "auto") == "randomized"      # MiniLM at rank 8: 8 <= 384 / 8
    assert choose_svd((256, 688), 32, "auto") == "randomized"      # 32 == 256 / 8
    assert choose_svd((256, 688), 33, "auto") == "exact"
    assert choose_svd((256, 256), 64, "auto") == "exact"           # LLaMA-20M at rank 64
    assert choose_svd((256, 256), 16, "exact") == "exact" and choose_svd((4096, 4096), 1024, "randomized") == "randomized"
    torch.manual_seed(0)
    g = torch.randn(96, 64)
    for rank, same_as in ((8, "randomized"), (16, "exact")):   # 64 / 8 = 8
        auto, _ = compute_projection(g, rank, "left", svd="auto", seed=3)
        ref, _ = compute_projection(g, rank, "left", svd=same_as, seed=3)
        assert torch.equal(auto, ref), rank
    exact8, _ = compute_projection(g, 8, "left", svd="exact")
    assert not torch.allclose(compute_projection(g, 8, "left", svd="auto", seed=3)[0].abs(), exact8.abs(), atol=1e-4)


@pytest.mark.slow
def test_eight_bit_import_says_nothing():
    """bitsandbytes' notice about a 4-bit CPU kernel we never use does not reach the user."""
    import subprocess
    import sys

    code = ("import torch\nfrom gnlorp.optim import GaLoreAdamW8bit\n"
            "p = torch.nn.Parameter(torch.randn(64, 64))\nGaLoreAdamW8bit([{'params': [p], 'rank': 8}], lr=1e-3)\n"
            "import gnlorp.checks")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "" and p.stdout == "", p.stderr


@pytest.mark.parametrize("side", ["left", "both"])
def test_exact_projection_is_the_projection_and_does_not_depend_on_a_row_split(side):
    """exact_projection's R (what FSDP's row shards reproduce, tests/e2e/test_fsdp.py) is P^T G (Q^T) to
    float32 rounding; left: the float64 sums over any row split round to the same float32 R."""
    from gnlorp.optim.projector import left_sum_float64, project

    torch.manual_seed(0)
    G = torch.randn(3000, 96)  # more rows than one float64 chunk
    P = torch.linalg.qr(torch.randn(3000, 8))[0]
    Q = torch.linalg.qr(torch.randn(96, 8))[0].t().contiguous()
    reference = P.double().t() @ G.double() if side == "left" else P.double().t() @ G.double() @ Q.double().t()
    R = project(G, side, P, Q, exact=True)
    assert R.dtype == torch.float32
    assert torch.allclose(R.double(), reference, rtol=1e-6, atol=1e-5)
    assert torch.allclose(R, project(G, side, P, Q), rtol=1e-5, atol=1e-4)  # the plain GEMM's value
    if side == "left":
        assert torch.equal(R, reference.float())  # rounded once from float64
        split = left_sum_float64(G[:1234], P[:1234]) + left_sum_float64(G[1234:], P[1234:])
        assert torch.equal(split.float(), R)
