"""ApolloAdamW against the apollo-torch oracle (APOLLO channel-wise, APOLLO-Mini tensor-wise, random and SVD
projectors, limiter on and off), where we deviate from it (state that round-trips), resume bit for bit,
layer-wise mode, and the 8-bit path against 32-bit."""

import io

import pytest
import torch
from torch import nn

from gnlorp.optim import ApolloAdamW, LayerwiseOptimizer
from gnlorp.optim.apollo import next_seed, stable_randn

MODES = {  # the reference's documented modes (its README and scripts/pretrain_c4/*.sh)
    "apollo_random": dict(rank=4, scale_type="channel", proj="random", scale=1.0, scale_front=False),
    "apollo_svd": dict(rank=4, scale_type="channel", proj="svd", scale=1.0, scale_front=False),
    "mini_random": dict(rank=1, scale_type="tensor", proj="random", scale=128.0, scale_front=True),
    "mini_svd": dict(rank=1, scale_type="tensor", proj="svd", scale=128.0, scale_front=True),
    "apollo_no_limiter": dict(rank=4, scale_type="channel", proj="random", scale=2.0, scale_front=False,
                              disable_nl=True),
}


def _mlp(seed=0):
    torch.manual_seed(seed)
    # one wide (m < n: left projector, per-column factors), one tall (m > n: right, per-row) and one square matrix
    return nn.Sequential(nn.Linear(48, 24), nn.Tanh(), nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(),
                         nn.Linear(40, 3))


def _groups(model, gap, ours, rank, scale_type, proj, scale, scale_front, disable_nl=False):
    mats = [model[0].weight, model[2].weight, model[4].weight]
    rest = [p for p in model.parameters() if all(p is not m for m in mats)]
    g = {"params": mats, "rank": rank, "update_proj_gap": gap, "scale": scale, "proj_type": "std", "proj": proj,
         "scale_type": scale_type}
    if ours:
        g.update(scale_front=scale_front, norm_growth_limiter=not disable_nl, svd_signs="lapack")
    return [{"params": rest}, g]


def _ours(model, mode, gap=7, **kw):
    return ApolloAdamW(_groups(model, gap, True, **MODES[mode]), lr=3e-3, weight_decay=0.01, **kw)


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
def test_matches_apollo_torch_for_30_steps(mode):
    apollo_torch = pytest.importorskip("apollo_torch")
    kw = dict(MODES[mode])
    ours, ref = _mlp(), _mlp()
    opt = _ours(ours, mode)  # gap 7: four projector refreshes in 30 steps
    opt_ref = apollo_torch.APOLLOAdamW(_groups(ref, 7, False, **kw), lr=3e-3, weight_decay=0.01,
                                       scale_front=kw["scale_front"], disable_nl=kw.get("disable_nl", False))
    _train(ours, opt, 30)
    _train(ref, opt_ref, 30)
    assert _max_diff(ours, _mlp()) > 1e-2, "the comparison would be vacuous if nothing moved"
    diff = _max_diff(ours, ref)
    print(f"{mode}: max abs diff {diff:.3g}")
    assert diff <= 1e-5
    if kw["proj"] == "random":  # the same draws: seeds and projectors equal the reference's after 4 refreshes
        for p in (ours[0].weight, ours[2].weight):
            ref_proj = opt_ref.state[dict(zip(map(id, ours.parameters()), ref.parameters()))[id(p)]]["projector"]
            st = opt.state[p]
            assert st["seed"] == ref_proj.seed
            torch.testing.assert_close(st.get("proj_left", st.get("proj_right")), ref_proj.ortho_matrix, rtol=0, atol=0)


def test_random_projector_is_seeded_and_advances():
    assert torch.equal(stable_randn((3, 5), 7, torch.device("cpu")), stable_randn((3, 5), 7, torch.device("cpu")))
    assert next_seed(1) != 1 and next_seed(1) == next_seed(1)
    model = _mlp()
    opt = _ours(model, "apollo_random")
    _train(model, opt, 1)
    # seeds: position over all groups (the reference's params_idx); the rest group (3 biases, the head's
    # weight and bias) comes first
    assert opt.state[model[0].weight]["seed"] == next_seed(6)
    assert opt.state[model[2].weight]["seed"] == next_seed(7)


def test_refuses_what_the_reference_gets_wrong_or_lacks():
    model = _mlp()
    with pytest.raises(ValueError, match="proj_type"):
        ApolloAdamW([{"params": [model[0].weight], "rank": 2, "proj_type": "left"}])
    with pytest.raises(ValueError, match="scale_type"):
        ApolloAdamW([{"params": [model[0].weight], "rank": 2, "scale_type": "row"}])
    with pytest.raises(ValueError, match="proj must"):
        ApolloAdamW([{"params": [model[0].weight], "rank": 2, "proj": "qr"}])


@pytest.mark.parametrize("mode", ["apollo_random", "mini_svd"])
def test_resume_through_weights_only_state_dict_is_exact(mode):
    """apollo-torch keeps a GradientProjector object in the state (torch.load(weights_only=True) refuses it);
    ours holds tensors and ints: 10 steps, save, load into fresh objects, 10 more == 20 straight, bitwise."""
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
    assert opt2.state[resumed[0].weight]["scaled_grad"].dtype == torch.float32
    _train(resumed, opt2, 10, start=10)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_layerwise_equals_normal_mode():
    normal, lw = _mlp(), _mlp()
    _train(normal, _ours(normal, "apollo_random"), 12)
    opt = LayerwiseOptimizer(_ours(lw, "apollo_random"))
    _train(lw, opt, 12)
    assert _max_diff(normal, lw) <= 1e-6


@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
@pytest.mark.parametrize("shape", [(128, 256), (256, 128)])  # left and right projector, 8-bit moments of 32768
def test_8bit_step_close_to_32bit(shape, scale_type):
    """bitsandbytes' direction carries the bias correction, so the step size is lr: the same update."""
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    w = torch.randn(*shape)
    steps = {}
    for bits in (32, 8):
        p = nn.Parameter(w.clone())
        opt = ApolloAdamW([{"params": [p], "rank": 128, "update_proj_gap": 50, "scale_type": scale_type}], lr=1e-2,
                          eps=1e-8, optim_bits=bits)
        g = torch.Generator().manual_seed(3)
        for i in range(5):  # build up some moment history first, then compare the step after it
            p.grad = torch.randn(*shape, generator=g)
            before = p.detach().clone()
            opt.step()
        steps[bits] = p.detach() - before
        assert opt.state[p]["exp_avg"].dtype == (torch.uint8 if bits == 8 else torch.float32)
    rel = (steps[8] - steps[32]).norm() / steps[32].norm()
    assert steps[32].norm() > 0
    assert rel < 0.05


@pytest.mark.parametrize("name", ["apollo", "apollo_mini"])
def test_registry_methods_match_apollo_torch_on_a_tiny_llama(name):
    """method=apollo / apollo_mini as the runner builds them (groups, defaults of the YAMLs' settings) against
    apollo_torch.APOLLOAdamW given the same groups: 8 steps, T=3 (three draws)."""
    apollo_torch = pytest.importorskip("apollo_torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from gnlorp.methods import MethodConfig, get_method

    def tiny():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=32))

    cfg = MethodConfig(name=name, lr=1e-2, rank=8, update_proj_gap=3, weight_decay=0.01)
    method = get_method(name)
    ours, ref = method.prepare(tiny(), cfg), tiny()
    opt = method.build_optimizer(ours, cfg)
    low = opt.param_groups[-1]
    expected = dict(rank=1, scale=128.0, scale_type="tensor", scale_front=True) if name == "apollo_mini" else \
        dict(rank=8, scale=1.0, scale_type="channel", scale_front=False)
    assert {k: low[k] for k in expected} == expected and low["proj"] == "random" and low["norm_growth_limiter"]
    ref_params = dict(ref.named_parameters())
    ids = {id(p): n for n, p in ours.named_parameters()}
    groups = [{**{k: v for k, v in g.items() if k not in ("scale_front", "norm_growth_limiter")},
               "params": [ref_params[ids[id(p)]] for p in g["params"]]} for g in opt.param_groups]
    opt_ref = apollo_torch.APOLLOAdamW(groups, lr=1e-2, scale_front=low["scale_front"])
    g = torch.Generator().manual_seed(2)
    for _ in range(8):
        x = torch.randint(0, 64, (4, 16), generator=g)
        for model, o in ((ours, opt), (ref, opt_ref)):
            o.zero_grad()
            model(input_ids=x, labels=x).loss.backward()
            o.step()
    assert _max_diff(ours, tiny()) > 1e-3
    diff = _max_diff(ours, ref)
    print(f"{name} on a tiny LLaMA: max abs diff {diff:.3g}")
    assert diff <= 1e-5
