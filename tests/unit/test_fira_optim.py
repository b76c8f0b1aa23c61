"""FiraAdamW against the fira oracle (fira==1.0.2's FiraAdamW: every proj_type it runs, scale 1 and 0.25, weight decay
on and off), where we deviate from it (state that round-trips, proj_type full refused), resume bit for bit,
layer-wise mode, the 8-bit path against 32-bit, and the registry's method=fira against the reference."""

import io
import warnings

import pytest
import torch
from torch import nn

from gnlorp.optim import FiraAdamW, LayerwiseOptimizer

MODES = {  # the reference's proj_types (its gradient_projection.py) with its scripts' alpha (0.25) and 1
    "std": dict(proj_type="std", scale=0.25, weight_decay=0.0),
    "std_alpha1_wd": dict(proj_type="std", scale=1.0, weight_decay=0.01),
    "reverse_std": dict(proj_type="reverse_std", scale=0.25, weight_decay=0.01),
    "left": dict(proj_type="left", scale=0.25, weight_decay=0.0),
    "right": dict(proj_type="right", scale=0.5, weight_decay=0.01),
}
RANK, GAP = 4, 7  # gap 7: refreshes at steps 0, 7, 14, 21, 28 of 30


def _mlp(seed=0):
    torch.manual_seed(seed)
    # one wide (m < n), one tall (m > n) and one square matrix: under std a left and a right projector
    return nn.Sequential(nn.Linear(48, 24), nn.Tanh(), nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(),
                         nn.Linear(40, 3))


def _groups(model, ours, proj_type, scale, gap=GAP):
    mats = [model[0].weight, model[2].weight, model[4].weight]
    rest = [p for p in model.parameters() if all(p is not m for m in mats)]
    g = {"params": mats, "rank": RANK, "update_proj_gap": gap, "proj_type": proj_type}
    # the reference's key for GaLore's scale is `alpha`; svd_signs=lapack: LAPACK's singular vectors, as it uses
    g.update({"scale": scale, "svd_signs": "lapack", "svd": "exact"} if ours else {"alpha": scale})
    return [{"params": rest}, g]


def _ours(model, mode="std", **kw):
    m = MODES[mode]
    return FiraAdamW(_groups(model, True, m["proj_type"], m["scale"]), lr=3e-3, weight_decay=m["weight_decay"], **kw)


def _reference(model, mode):
    fira = pytest.importorskip("fira")
    m = MODES[mode]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' AdamW deprecation notice it copies
        return fira.FiraAdamW(_groups(model, False, m["proj_type"], m["scale"]), lr=3e-3,
                              weight_decay=m["weight_decay"])


def _train(model, opt, steps, start=0):
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(16, 48, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("mode", list(MODES))
def test_matches_fira_for_30_steps(mode):
    ours, ref = _mlp(), _mlp()
    opt, opt_ref = _ours(ours, mode), _reference(ref, mode)
    _train(ours, opt, 30)
    _train(ref, opt_ref, 30)
    assert _max_diff(ours, _mlp()) > 1e-2, "the comparison would be vacuous if nothing moved"
    diff = _max_diff(ours, ref)
    print(f"{mode}: max abs diff {diff:.3g}")
    assert diff <= 1e-5
    # the limiter's last norm and the moments equal the reference's after 5 refreshes
    for p, q in zip((ours[0].weight, ours[2].weight, ours[4].weight), (ref[0].weight, ref[2].weight, ref[4].weight)):
        st, st_ref = opt.state[p], opt_ref.state[q]
        torch.testing.assert_close(st["scaling_grad"], st_ref["scaling_grad"].float(), rtol=1e-5, atol=0)
        torch.testing.assert_close(st["exp_avg"], st_ref["exp_avg"], rtol=0, atol=1e-6)


def test_limiter_caps_the_growth_of_the_correction():
    """A gradient 100x larger than the last one: the correction's norm grows by 1.01x, not 100x."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(24, 48))
    opt = FiraAdamW([{"params": [p], "rank": 4, "update_proj_gap": 50, "scale": 1.0}], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    p.grad = torch.randn(24, 48, generator=g)
    opt.step()
    first = opt.state[p]["scaling_grad"].clone()
    p.grad = 100 * torch.randn(24, 48, generator=g)
    opt.step()
    assert opt.state[p]["scaling_grad"].item() == pytest.approx(1.01 * first.item(), rel=1e-5)


def test_refuses_full_projection_and_unknown_proj_types():
    model = _mlp()
    with pytest.raises(ValueError, match="proj_type"):
        FiraAdamW([{"params": [model[0].weight], "rank": 2, "proj_type": "full"}])
    with pytest.raises(ValueError, match="proj_type"):
        FiraAdamW([{"params": [model[0].weight], "rank": 2, "proj_type": "diagonal"}])


def test_square_low_rank_gradient_scales_by_the_projector_side_where_the_reference_fails():
    """A left projector at rank = n (40 x 24 weight, rank 24): R is 24 x 24. The reference takes its factor per row
    of R, (24, 1), which does not broadcast over the 40 x 24 weight; ours takes it per column of W (its side)."""
    fira = pytest.importorskip("fira")
    torch.manual_seed(0)
    w = torch.randn(40, 24)
    grad = torch.randn(40, 24)
    p, q = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = fira.FiraAdamW([{"params": [q], "rank": 24, "update_proj_gap": 5, "alpha": 1.0, "proj_type": "left"}])
    q.grad = grad.clone()
    with pytest.raises(RuntimeError, match="size of tensor"):
        ref.step()
    opt = FiraAdamW([{"params": [p], "rank": 24, "update_proj_gap": 5, "scale": 1.0, "proj_type": "left"}])
    p.grad = grad.clone()
    opt.step()
    # rank = n: P P^T is the identity on G's column space, so the correction is ~0 and the step is GaLore's
    assert torch.isfinite(p).all() and not torch.equal(p, w)
    assert opt.state[p]["scaling_grad"].item() < 1e-4


def test_reference_state_does_not_load_weights_only_but_ours_does():
    """fira 1.0.2 keeps a GradientProjector object in the state: torch.load(weights_only=True) refuses its
    state_dict. Ours holds tensors and ints (and the limiter's norm as a float32 0-d tensor)."""
    ours, ref = _mlp(), _mlp()
    opt, opt_ref = _ours(ours), _reference(ref, "std")
    _train(ours, opt, 2)
    _train(ref, opt_ref, 2)
    buf = io.BytesIO()
    torch.save(opt_ref.state_dict(), buf)
    buf.seek(0)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        torch.load(buf, weights_only=True)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["state"]
    assert all(torch.is_tensor(v) or isinstance(v, int) for st in state.values() for v in st.values())


@pytest.mark.parametrize("mode", ["std", "reverse_std"])
def test_resume_through_weights_only_state_dict_is_exact(mode):
    """10 steps, save, load into fresh objects, 10 more == 20 straight, bitwise (refreshes at 0, 7, 14)."""
    straight = _mlp()
    _train(straight, _ours(straight, mode), 20)
    first = _mlp()
    opt = _ours(first, mode)
    _train(first, opt, 10)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = _mlp(seed=5)
    resumed.load_state_dict(ckpt["model"])
    opt2 = _ours(resumed, mode)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.state[resumed[0].weight]["scaling_grad"].dtype == torch.float32
    _train(resumed, opt2, 10, start=10)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_layerwise_equals_normal_mode():
    normal, lw = _mlp(), _mlp()
    _train(normal, _ours(normal), 12)
    _train(lw, LayerwiseOptimizer(_ours(lw)), 12)
    assert _max_diff(normal, lw) <= 1e-6


@pytest.mark.parametrize("shape", [(128, 256), (256, 128)])  # left and right projector, 8-bit moments of 16384
def test_8bit_step_close_to_32bit(shape):
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    w = torch.randn(*shape)
    steps = {}
    for bits in (32, 8):
        p = nn.Parameter(w.clone())
        opt = FiraAdamW([{"params": [p], "rank": 64, "update_proj_gap": 50, "scale": 0.25}], lr=1e-2, eps=1e-8,
                        optim_bits=bits)
        g = torch.Generator().manual_seed(3)
        for _ in range(5):  # build up some moment history (and the limiter's), then compare the step after it
            p.grad = torch.randn(*shape, generator=g)
            before = p.detach().clone()
            opt.step()
        steps[bits] = p.detach() - before
        assert opt.state[p]["exp_avg"].dtype == (torch.uint8 if bits == 8 else torch.float32)
    rel = (steps[8] - steps[32]).norm() / steps[32].norm()
    assert steps[32].norm() > 0
    assert rel < 0.05


def test_registry_method_matches_fira_on_a_tiny_llama():
    """method=fira as the runner builds it (groups, the YAML's settings, svd_signs=lapack and exact SVD to
    take the reference's projector) against fira.FiraAdamW given the same groups: 8 steps, T=3 (three refreshes)."""
    fira = pytest.importorskip("fira")
    from transformers import LlamaConfig, LlamaForCausalLM

    from gnlorp.methods import MethodConfig, get_method

    def tiny():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=32))

    cfg = MethodConfig(name="fira", lr=1e-2, rank=8, scale=0.25, update_proj_gap=3, weight_decay=0.01,
                       svd="exact", svd_signs="lapack")
    method = get_method("fira")
    ours, ref = method.prepare(tiny(), cfg), tiny()
    opt = method.build_optimizer(ours, cfg)
    assert isinstance(opt, FiraAdamW)
    low = opt.param_groups[-1]
    assert {k: low[k] for k in ("rank", "scale", "proj_type", "update_proj_gap")} == \
        dict(rank=8, scale=0.25, proj_type="std", update_proj_gap=3)
    ref_params = dict(ref.named_parameters())
    ids = {id(p): n for n, p in ours.named_parameters()}
    groups = []
    for g in opt.param_groups:
        h = {"params": [ref_params[ids[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
        if "rank" in g:
            h.update(rank=g["rank"], update_proj_gap=g["update_proj_gap"], alpha=g["scale"], proj_type=g["proj_type"])
        groups.append(h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        opt_ref = fira.FiraAdamW(groups, lr=1e-2)
    g = torch.Generator().manual_seed(2)
    for _ in range(8):
        x = torch.randint(0, 64, (4, 16), generator=g)
        for model, o in ((ours, opt), (ref, opt_ref)):
            o.zero_grad()
            model(input_ids=x, labels=x).loss.backward()
            o.step()
    assert _max_diff(ours, tiny()) > 1e-3
    diff = _max_diff(ours, ref)
    print(f"fira on a tiny LLaMA: max abs diff {diff:.3g}")
    assert diff <= 1e-5
