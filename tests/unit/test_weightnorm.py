"""GradNormLoRP's weight-norm reparameterization against its defining formulas."""

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from gnlorp.optim import GaLoreAdamW, WeightNormLinear, apply_weight_norm, merge_weight_norm


def _linear(m=12, n=20, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n, m)


def test_output_unchanged_at_init_and_storage_shared():
    lin = _linear()
    x = torch.randn(7, 20)
    ref = lin(x)
    wn = WeightNormLinear(lin)
    assert wn.direction.data_ptr() == lin.weight.data_ptr(), "V reuses W's storage: no copy at prepare time"
    assert (wn(x) - ref).abs().max() <= 1e-6


def test_direction_gradient_is_the_weight_normalized_gradient():
    lin = _linear()
    wn = WeightNormLinear(lin)
    with torch.no_grad():
        wn.magnitude.mul_(torch.linspace(0.5, 2.0, 12))  # g != ||V|| so the scaling is visible
    x, t = torch.randn(9, 20), torch.randn(9, 12)
    ((wn(x) - t) ** 2).sum().backward()
    G_V = wn.direction.grad

    # reference: dL/dW of a plain Linear holding the merged weight, then (g/||v||)(I - v v^T/||v||^2) per row
    W = wn.merged_weight().clone().requires_grad_(True)
    ((x @ W.T + wn.bias.detach() - t) ** 2).sum().backward()
    V, g = wn.direction.detach(), wn.magnitude.detach()
    norms = V.norm(dim=1, keepdim=True)
    vhat = V / norms
    expected = (g[:, None] / norms) * (W.grad - (W.grad * vhat).sum(1, keepdim=True) * vhat)
    assert torch.allclose(G_V, expected, atol=1e-5, rtol=1e-4)
    cos = (G_V * V).sum(1).abs() / (G_V.norm(dim=1) * V.norm(dim=1))
    assert cos.max() <= 1e-5


def test_regression_loss_falls_and_both_g_and_v_move():
    torch.manual_seed(0)
    teacher = nn.Linear(20, 12)
    x = torch.randn(64, 20)
    y = teacher(x).detach()
    wn = WeightNormLinear(_linear(seed=1))
    v0, g0 = wn.direction.detach().clone(), wn.magnitude.detach().clone()
    opt = GaLoreAdamW([
        {"params": [wn.direction], "rank": 4, "update_proj_gap": 10, "scale": 1.0},
        {"params": [wn.magnitude, wn.bias]},
    ], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = ((wn(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (wn.direction.detach() - v0).norm() > 1e-3
    assert (wn.magnitude.detach() - g0).norm() > 1e-3


def test_no_second_weight_sized_tensor_saved_for_backward():
    lin = _linear(64, 96)
    wn = WeightNormLinear(lin)
    x = torch.randn(5, 96)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        wn(x).sum()
    weight_sized = [t for t in saved if t.shape == (64, 96)]
    assert weight_sized, "the direction itself is saved (as a plain Linear saves its weight)"
    assert all(t.data_ptr() == wn.direction.data_ptr() for t in weight_sized)


def test_merge_gives_plain_linear_model_with_equal_outputs():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    apply_weight_norm(model, ["0", "2"])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WeightNormLinear):
                m.magnitude.mul_(1.3)
                m.direction.add_(0.1 * torch.randn_like(m.direction))
    x = torch.randn(10, 16)
    before = model(x)
    merge_weight_norm(model)
    assert all(type(m) is nn.Linear for m in (model[0], model[2]))
    assert (model(x) - before).abs().max() <= 1e-5


def test_merged_hf_model_loads_in_vanilla_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]
    apply_weight_norm(model, names)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WeightNormLinear):
                m.magnitude.mul_(0.9)
    ids = torch.randint(0, 128, (2, 16))
    model.eval()
    logits = model(ids).logits
    merge_weight_norm(model).save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert not any(isinstance(m, WeightNormLinear) for m in loaded.modules())
    assert torch.allclose(loaded(ids).logits, logits, atol=1e-5)


def test_bf16_weights_keep_a_float32_magnitude_and_the_output_at_init():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(9, 64).to(torch.bfloat16)
    ref = lin(x)
    wn = WeightNormLinear(lin)
    assert wn.magnitude.dtype == torch.float32
    assert torch.allclose(wn.magnitude, lin.weight.float().norm(dim=1), rtol=1e-6, atol=0)
    assert torch.equal(wn(x), ref), "g / ||V|| is exactly 1 at init: the bf16 Linear's output, bit for bit"


def test_bf16_merged_weight_is_the_weight_the_forward_uses():
    torch.manual_seed(0)
    wn = WeightNormLinear(nn.Linear(64, 48).to(torch.bfloat16))
    with torch.no_grad():
        wn.magnitude.mul_(torch.linspace(0.7, 1.3, 48))
        wn.direction.add_(0.01 * torch.randn_like(wn.direction))
    x = torch.randn(9, 64).to(torch.bfloat16)
    merged = wn.merged_weight()
    assert merged.dtype == torch.bfloat16
    # the forward's output is F.linear with the merged weight, bit for bit
    assert torch.equal(wn(x), torch.nn.functional.linear(x, merged, wn.bias))
    # and that weight is diag(g) V / ||V||_row computed in float64, rounded once to bf16 (at most 1 bf16 ulp)
    V, g = wn.direction.detach().double(), wn.magnitude.detach().double()
    expected = V * (g / V.norm(dim=1))[:, None]
    ulp = expected.abs() * 2.0**-8
    assert ((merged.double() - expected).abs() <= ulp + 1e-30).all()
    linear = wn.to_linear()
    assert torch.equal(linear(x), wn(x))


def test_casting_a_model_keeps_the_magnitude_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    apply_weight_norm(model, ["0"])
    g = model[0].magnitude.detach().clone()
    model.to(torch.bfloat16)
    assert model[0].direction.dtype == torch.bfloat16
    assert model[0].magnitude.dtype == torch.float32 and torch.equal(model[0].magnitude, g), "no bf16 round trip"
    model.double()
    assert model[0].magnitude.dtype == torch.float64 and torch.equal(model[0].magnitude, g.double())
    model.half()
    assert model[0].magnitude.dtype == torch.float64
