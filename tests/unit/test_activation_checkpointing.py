"""train.activation_checkpointing recomputes each block in backward: the gradients and the layer-wise updates
must be those of the plain model."""

import pytest
import torch

from gnlorp.errors import UserError
from gnlorp.methods import MethodConfig, get_method
from gnlorp.models import build_llama, enable_activation_checkpointing

TINY = dict(name="t", kind="llama", hidden_size=64, intermediate_size=172, num_hidden_layers=2,
            num_attention_heads=2, vocab_size=128, max_position_embeddings=64)


def trained(method, checkpointing, layerwise):
    model = build_llama(TINY, seed=0)
    enable_activation_checkpointing(model, checkpointing)
    cfg = MethodConfig(name=method, rank=None if method == "full" else 8, layerwise=layerwise, lr=1e-2)
    model = get_method(method).prepare(model, cfg)
    model.train()
    opt = get_method(method).build_optimizer(model, cfg)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return model, grads


@pytest.mark.parametrize("layerwise", [False, True])
@pytest.mark.parametrize("method", ["full", "gradnormlorp"])
def test_checkpointing_gives_the_same_gradients_and_step(method, layerwise):
    plain, g_plain = trained(method, False, layerwise)
    ckpt, g_ckpt = trained(method, True, layerwise)
    assert ckpt.model.gradient_checkpointing and not plain.model.gradient_checkpointing
    assert g_plain.keys() == g_ckpt.keys() and (layerwise or len(g_plain) > 0)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-5, atol=1e-7)
    after_plain, after_ckpt = dict(plain.named_parameters()), dict(ckpt.named_parameters())
    moved = 0
    for name, p in after_plain.items():
        torch.testing.assert_close(after_ckpt[name], p, rtol=1e-5, atol=1e-7)
        moved += not torch.equal(p, build_llama(TINY, seed=0).state_dict().get(name, p))
    assert moved > 0  # the step changed weights (layer-wise: inside backward)


def test_a_non_boolean_value_is_a_user_error():
    with pytest.raises(UserError, match="activation_checkpointing"):
        enable_activation_checkpointing(build_llama(TINY, seed=0, device="meta"), "yes")
