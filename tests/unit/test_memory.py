"""Measured optimizer-state bytes equal the analytic formula, for every method, in 32 and 8 bits."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from gnlorp.methods import estimate_state_bytes
from gnlorp.state_bytes import optimizer_state_bytes
from gnlorp.methods import METHODS, MethodConfig, get_method


def tiny(kind):
    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(
            vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            num_labels=3))
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=64))


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.slow)],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("name", list(METHODS))
def test_measured_equals_analytic(name, kind, bits, dtype):
    # rank 32: the projected moments of the 64x128 MLP matrices hold 4096 elements, the 8-bit threshold.
    # bf16 weights: 8-bit mode keeps float32 moments for tensors under the threshold (norms, biases, the
    # 32x64 projected moments), and GradNormLoRP's magnitude g and its moments are float32 in both modes.
    cfg = MethodConfig(name=name, lr=1e-3, rank=32, optim_bits=bits, proj_type="std")
    model = tiny(kind).to(dtype)
    expected = estimate_state_bytes(model, cfg)
    method = get_method(name)
    model = method.prepare(model, cfg)
    opt = method.build_optimizer(model, cfg)
    ids = torch.randint(0, 128, (2, 8))
    labels = torch.tensor([0, 2]) if kind == "bert" else ids
    model(input_ids=ids, labels=labels).loss.backward()
    opt.step()
    assert optimizer_state_bytes(opt) == expected


def test_formula_matches_hand_count_for_one_galore_matrix():
    """One 64 x 128 weight (std: left side since m < n), rank 8, float32: P is 64x8, R is 8x128."""
    lin = torch.nn.Sequential()
    lin.add_module("layers", torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(128, 64, bias=False))]))
    cfg = MethodConfig(name="galore", rank=8)
    assert estimate_state_bytes(lin, cfg) == 4 * (64 * 8 + 2 * 8 * 128)
    assert estimate_state_bytes(lin, MethodConfig(name="gradnormlorp", rank=8)) == 4 * (64 * 8 + 2 * 8 * 128 + 2 * 64)
    assert estimate_state_bytes(lin, MethodConfig(name="lora", rank=8)) == 4 * 2 * (64 * 8 + 8 * 128) + 4 * 2


def test_llama_7b_table_reproduces_galore_65_percent():
    """The GaLore paper's 65.5%: 16-bit GaLore at rank 1024 against BF16 AdamW states at LLaMA-7B (meta device)."""
    from gnlorp.memory import llama_memory_table

    rows = {(r["method"], r["rank"], r["state_bits"]): r for r in llama_memory_table(["llama_7b"], [512, 1024])}
    assert rows[("full", None, 16)]["params"] == 6_738_415_616
    assert abs(rows[("full", None, 16)]["state_bytes"] / 2**30 - 25.1) < 0.05  # METHOD.md: 25.1 GiB
    assert 0.645 <= rows[("galore", 1024, 16)]["saving_vs_bf16_adamw"] <= 0.66
    assert 0.78 <= rows[("gradnormlorp", 1024, 8)]["saving_vs_bf16_adamw"] <= 0.80  # METHOD.md: 79%
    assert 0.88 <= rows[("gradnormlorp", 512, 8)]["saving_vs_bf16_adamw"] <= 0.89   # METHOD.md: 88.6%


def test_the_table_command_states_what_it_counts_and_lists_every_method(capsys):
    """`python -m gnlorp.memory`: a header line with the memory definition, then a row for every registered method
    (DoRA and APOLLO-Mini included) and full training's torchao precisions."""
    from gnlorp.memory import DEFINITION, main

    main(["--sizes", "llama_60m", "--ranks", "128"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"Memory counted: {DEFINITION}."
    assert "optimizer states only" in DEFINITION and "weights, gradients and activations not counted" in DEFINITION
    rows = [r for ln in out.splitlines() if ln.startswith("| llama_60m | 58M |") for r in [ln.split(" | ")]]
    assert {r[2] for r in rows} == set(METHODS)
    assert [r[4] for r in rows if r[2] == "full"] == ["16-bit", "8-bit", "8-bit torchao", "4-bit torchao"]
