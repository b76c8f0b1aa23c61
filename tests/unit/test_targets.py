"""Default targets on the `transformer.h.N` models (GPT-2, Falcon, BLOOM) through the Trainer integration:
GaLore trains all three (GPT-2's Conv1D weights included), GradNormLoRP trains Falcon and BLOOM and refuses
GPT-2's Conv1D in one line; every refusal names the knob of its entry point."""

import pytest
import torch
from transformers import (
    BloomConfig, BloomForCausalLM, FalconConfig, FalconForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
    LlamaForCausalLM, TrainingArguments,
)
from transformers.pytorch_utils import Conv1D

from gnlorp.errors import UserError
from gnlorp.integrations.transformers import galore, gradnormlorp
from gnlorp.optim import WeightNormLinear
from gnlorp.optim.targets import is_conv1d, target_linear_names

# the attention and MLP matrices of each block, by the models' own module names
BLOCK = {
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "falcon": ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    "bloom": ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
}


def tiny(kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=32))
    if kind == "falcon":
        return FalconForCausalLM(FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4))
    if kind == "bloom":
        return BloomForCausalLM(BloomConfig(vocab_size=128, hidden_size=64, n_layer=2, n_head=4))
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=32))


def args(tmp_path):
    return TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-2, report_to=[], use_cpu=True)


def train(model, pair, steps=3):
    cls, kwargs = pair
    opt = cls(**kwargs)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt, losses


def projected_names(model, opt):
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(names[id(p)] for g in opt.param_groups if "rank" in g for p in g["params"])


@pytest.mark.parametrize("kind", ["gpt2", "falcon", "bloom"])
def test_galore_trains_the_attention_and_mlp_matrices_of_transformer_h_models(tmp_path, kind):
    model = tiny(kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, losses = train(model, galore(model, args(tmp_path), rank=8, update_proj_gap=2))
    expected = sorted(f"transformer.h.{i}.{m}.weight" for i in range(2) for m in BLOCK[kind])
    assert projected_names(model, opt) == expected
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for name in expected:
        assert (model.get_parameter(name) - before[name]).abs().max() > 1e-4, name
    if kind == "gpt2":  # Conv1D holds its weight as (in, out): projected as the 2-D matrix it is
        assert all(is_conv1d(model.get_submodule(n.rsplit(".", 1)[0])) for n in expected)


@pytest.mark.parametrize("kind", ["falcon", "bloom"])
def test_gradnormlorp_trains_falcon_and_bloom(tmp_path, kind):
    model = tiny(kind)
    opt, losses = train(model, gradnormlorp(model, args(tmp_path), rank=8, update_proj_gap=2))
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, WeightNormLinear))
    assert wrapped == sorted(f"transformer.h.{i}.{m}" for i in range(2) for m in BLOCK[kind])
    assert projected_names(model, opt) == [f"{n}.direction" for n in wrapped]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_gradnormlorp_refuses_gpt2_conv1d_naming_the_type_and_the_library_argument(tmp_path):
    model = tiny("gpt2")
    with pytest.raises(UserError) as err:
        gradnormlorp(model, args(tmp_path), rank=8)
    msg = str(err.value)
    assert "\n" not in msg and "Conv1D" in msg and "transformer.h.0.attn.c_attn" in msg
    assert "target_modules= argument" in msg and "method.target_modules" not in msg
    assert not any(isinstance(m, WeightNormLinear) for m in model.modules())  # refused before any change
    assert isinstance(model.get_submodule("transformer.h.0.attn.c_attn"), Conv1D)


def test_no_match_names_the_knob_of_each_entry_point(tmp_path):
    for factory in (galore, gradnormlorp):
        with pytest.raises(UserError, match=r"set the target_modules= argument to a regex") as err:
            factory(tiny("llama"), args(tmp_path), rank=8, target_modules=r"nothing\.here")
        assert "method.target_modules" not in str(err.value)
    with pytest.raises(UserError, match=r"set method\.target_modules to a regex"):
        target_linear_names(tiny("llama"), r"nothing\.here")  # the runner's methods
    with pytest.raises(UserError, match=r"Conv1D.*ReLoRA.*set method\.target_modules"):
        target_linear_names(tiny("gpt2"), None, method="ReLoRA")
