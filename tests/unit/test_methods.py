"""Every method behind the same interface: trains a tiny BERT classifier and a tiny LLaMA, changes its
target weights, keeps frozen weights frozen, and merges into a vanilla model with the same outputs."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from gnlorp.errors import UserError
from gnlorp.methods import METHODS, MethodConfig, get_method, target_linear_names

LR = {"full": 1e-3, "lora": 3e-3, "dora": 3e-3, "galore": 3e-3, "gradnormlorp": 3e-3, "relora": 3e-3,
      "switchlora": 3e-3, "apollo": 3e-3, "apollo_mini": 3e-3, "fira": 3e-3}
FROZEN_W = ("lora", "dora", "relora", "switchlora")  # W changes only when B A is merged (or swapped) into it


def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64))


def batch(kind):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (8, 12), generator=g)
    if kind == "bert":
        return {"input_ids": ids, "labels": torch.randint(0, 2, (8,), generator=g)}
    return {"input_ids": ids, "labels": ids}


def cfg(name, **kw):
    return MethodConfig(name=name, lr=LR[name], rank=4, scale=1.0, update_proj_gap=5, **kw)


def first_target_weight(model):
    """The dense weight of the first target layer, as a plain tensor, whatever the method wrapped it in."""
    for n, m in model.named_modules():
        if n.endswith("layer.0.attention.self.query") or n.endswith("layers.0.self_attn.q_proj"):
            if hasattr(m, "base_layer"):
                return m.base_layer.weight
            if hasattr(m, "direction"):
                return m.merged_weight()
            return m.weight
    raise AssertionError("no target found")


@pytest.mark.parametrize("kind", [pytest.param("bert", marks=pytest.mark.slow), "llama"])
@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_and_merges(name, kind):
    model = tiny_bert() if kind == "bert" else tiny_llama()
    method = get_method(name)
    c = cfg(name)
    model = method.prepare(model, c)
    opt = method.build_optimizer(model, c)
    w0 = first_target_weight(model).detach().clone()
    b = batch(kind)
    model.train()
    losses = []
    for _ in range(12):
        loss = model(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    w1 = first_target_weight(model).detach()
    if name in FROZEN_W:
        assert torch.equal(w0, w1), "LoRA's base weight is frozen"
    else:
        assert not torch.allclose(w0, w1), "the target weight trains"

    model.eval()
    with torch.no_grad():
        before = model(**b).logits
        merged = method.merge(model)
        after = merged(**b).logits
    assert type(merged).__name__ in ("BertForSequenceClassification", "LlamaForCausalLM")
    assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith(("query", "q_proj")))
    assert (before - after).abs().max() < 1e-4
    if name in FROZEN_W:
        assert not torch.equal(first_target_weight(merged).detach(), w0), "merging folds B A into W"


def test_default_targets_are_block_linears_only():
    bert = target_linear_names(tiny_bert())
    assert len(bert) == 2 * 6  # query, key, value, attention.output.dense, intermediate.dense, output.dense
    assert not any("pooler" in n or "classifier" in n for n in bert)
    llama = target_linear_names(tiny_llama())
    assert len(llama) == 2 * 7 and "lm_head" not in llama


@pytest.mark.parametrize("rank", [0, -1, 33])
def test_bad_rank_is_a_user_error(rank):
    with pytest.raises(UserError, match=f"rank={rank}"):
        get_method("galore").prepare(tiny_llama(), MethodConfig(name="galore", rank=rank))


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="Unknown method 'adafactor'"):
        get_method("adafactor")


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_lora_classifier_trains_the_whole_head_pooler_included(name):
    """BERT's head is pooler + classifier (RoBERTa's `classifier` holds the same dense + tanh + projection),
    so LoRA trains both, besides B A (and DoRA's magnitudes); the encoder's own weights stay frozen."""
    model = get_method(name).prepare(tiny_bert(), cfg(name))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    r, h, i = 4, 32, 64
    lora_per_layer = 4 * r * (h + h) + r * (h + i) + r * (i + h)  # q, k, v, attn-out; intermediate; output
    dora_per_layer = 5 * h + i if name == "dora" else 0            # one magnitude per output row
    head = (h * h + h) + (h * 2 + 2)                               # pooler.dense + classifier
    assert sum(trainable.values()) == 2 * (lora_per_layer + dora_per_layer) + head
    assert any(".pooler." in n for n in trainable) and any("classifier" in n for n in trainable)
    assert not any(n.endswith("query.base_layer.weight") for n in trainable)


@pytest.mark.parametrize("bits", [32, 8])
def test_gradnormlorp_weight_decay_scales_g_and_leaves_v_alone(bits):
    """Decoupled decay on W = diag(g) V / ||V||_row acts on g: one step with weight_decay=wd equals the step
    with wd=0 followed by g <- (1 - lr wd) g (GaLoreAdamW decays after the update, as galore-torch), while V
    ends bit for bit where it would without decay."""
    lr, wd = 1e-2, 0.5
    out = {}
    for decay in (0.0, wd):
        model = tiny_llama()
        c = MethodConfig(name="gradnormlorp", lr=lr, rank=4, weight_decay=decay, optim_bits=bits)
        model = get_method("gradnormlorp").prepare(model, c)
        opt = get_method("gradnormlorp").build_optimizer(model, c)
        model(**batch("llama")).loss.backward()
        opt.step()
        out[decay] = dict(model.named_parameters())
    plain, decayed = out[0.0], out[wd]
    magnitudes = [n for n in plain if n.endswith(".magnitude")]
    directions = [n for n in plain if n.endswith(".direction")]
    assert len(magnitudes) == len(directions) == 14
    for n in directions:
        assert torch.equal(decayed[n], plain[n]), n
    for n in magnitudes:
        assert torch.allclose(decayed[n], (1 - lr * wd) * plain[n], rtol=1e-6, atol=0), n
        assert not torch.allclose(decayed[n], plain[n], rtol=1e-3, atol=0), n
    # with a zero gradient, Adam's update is 0 and the step is the decay alone: g (1 - lr wd), by hand
    model = tiny_llama()
    c = MethodConfig(name="gradnormlorp", lr=lr, rank=4, weight_decay=wd, optim_bits=bits)
    model = get_method("gradnormlorp").prepare(model, c)
    opt = get_method("gradnormlorp").build_optimizer(model, c)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n.endswith(".magnitude"):
            assert torch.allclose(p, before[n] * (1 - lr * wd), rtol=1e-6, atol=0), n
        elif n.endswith(".direction") or p.dim() < 2:
            assert torch.equal(p, before[n]), n  # V and norm weights: no decay
        else:
            assert torch.allclose(p, before[n] * (1 - lr * wd), rtol=1e-6, atol=0), n  # embeddings, LM head
