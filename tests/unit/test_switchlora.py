"""SwitchLoRA: a swap leaves the model's function unchanged, resets exactly the counterparts' Adam state,
follows the switching schedule, resumes exactly, merges into a vanilla LLaMA, and its state bytes match
the analytic count."""

import io
import json
import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from gnlorp.errors import UserError
from gnlorp.methods import MethodConfig, get_method
from gnlorp.optim.switchlora import (
    SwitchAdamW, expected_switches, switch_count, switch_interval, switchlora_layers,
)

METHOD = get_method("switchlora")


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=64))


def cfg(**kw):
    base = dict(name="switchlora", lr=1e-2, rank=4, lora_alpha=4.0, switch_lora_interval=4, adam_warm_step=2)
    return MethodConfig(**{**base, **kw})


def batch(i=0):
    ids = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(100 + i))
    return {"input_ids": ids, "labels": ids}


def train(model, opt, steps, hooks=None, start=0):
    model.train()
    for s in range(start, start + steps):
        model(**batch(s)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if hooks:
            hooks["after_step"](s + 1)


def logits(model, b=None):
    model.eval()
    with torch.no_grad():
        return model(**(b or batch(99))).logits


def setup(seed=0, total=40, **kw):
    c = cfg(**kw)
    model = tiny_llama(seed)
    model = METHOD.prepare(model, c)
    opt = METHOD.build_optimizer(model, c)
    return model, opt, c, METHOD.loop_hooks(model, opt, c, total_steps=total)


def test_prepare_and_every_swap_leave_the_function_unchanged():
    plain = tiny_llama()
    before = logits(plain)
    model, opt, c, _ = setup()
    assert (logits(model) - before).abs().max() < 1e-5, "W absorbs the initial B A"
    train(model, opt, 3)
    layer = switchlora_layers(model)[0]
    for _ in range(3):
        ref = logits(model)
        a, w = layer.lora_A.detach().clone(), layer.weight.detach().clone()
        pool_a = layer.candidates_A.clone()
        old_slots = layer.selected_A.clone()
        rows, cols = layer.switch(2, c.adam_warm_step)
        assert len(rows) == len(cols) == 2
        assert (logits(model) - ref).abs().max() < 1e-5
        assert not torch.equal(layer.weight, w) and not torch.equal(layer.lora_A[rows], a[rows])
        assert torch.equal(layer.lora_A[rows], pool_a[layer.selected_A[rows]]), "the new rows come from the pool"
        assert torch.equal(layer.candidates_A[old_slots[rows]], a[rows]), "the old rows go back to their slots"
        keep = [i for i in range(4) if i not in rows.tolist()]
        assert torch.equal(layer.lora_A[keep], a[keep])
        assert torch.equal(layer.lora_B[:, cols], layer.candidates_B[layer.selected_B[cols]].T)
        assert torch.equal(layer.frozen_B[rows], torch.full((2,), 2, dtype=torch.int32))
        layer.tick(), layer.tick()  # thaw, so the cursors may pass again


def test_only_the_counterparts_of_swapped_vectors_have_reset_moments_and_steps():
    model, opt, c, _ = setup()
    train(model, opt, 4)
    layer = switchlora_layers(model)[1]
    sa, sb = opt.state[layer.lora_A], opt.state[layer.lora_B]
    snap = {k: {n: t.clone() for n, t in s.items()} for k, s in (("A", sa), ("B", sb))}
    assert sa["step"].shape == (4, 1) and sb["step"].shape == (1, 4)
    rows, cols = layer.switch(1, c.adam_warm_step)
    opt.reset(layer.lora_B, rows, 1)
    opt.reset(layer.lora_A, cols, 0)
    (i,), (j,) = rows.tolist(), cols.tolist()
    for n in ("exp_avg", "exp_avg_sq", "step"):
        assert (sb[n][:, i] == 0).all() and (sa[n][j] == 0).all()
        others_b = [k for k in range(4) if k != i]
        others_a = [k for k in range(4) if k != j]
        assert torch.equal(sb[n][:, others_b], snap["B"][n][:, others_b])
        assert torch.equal(sa[n][others_a], snap["A"][n][others_a])
    assert sa["step"][others_a].eq(4).all()
    # frozen for adam_warm_step (2) steps: B's column i and A's row j do not move; their steps restart at 0
    b_col, a_row = layer.lora_B[:, i].detach().clone(), layer.lora_A[j].detach().clone()
    for k in range(2):
        train(model, opt, 1, start=10 + k)
        layer.tick()
        assert torch.equal(layer.lora_B[:, i], b_col) and torch.equal(layer.lora_A[j], a_row)
    assert sb["step"][0, i] == 2 and sb["step"][0, others_b[0]] == 6
    train(model, opt, 1, start=20)
    assert not torch.equal(layer.lora_B[:, i], b_col), "thawed after adam_warm_step steps"


def test_switch_adamw_without_swaps_is_torch_adamw():
    """Per-row step counts that all advance together are torch.optim.AdamW (the oracle), with decay."""
    torch.manual_seed(0)
    a, b, d = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(7))
    ref = [nn.Parameter(t.detach().clone()) for t in (a, b, d)]
    ours = SwitchAdamW([{"params": [a], "per": "row"}, {"params": [b], "per": "col"}, {"params": [d]}],
                       lr=1e-2, weight_decay=0.1)
    oracle = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, eps=1e-8, foreach=False)
    for t in range(10):
        for p, q in zip((a, b, d), ref):
            g = torch.randn(p.shape, generator=torch.Generator().manual_seed(t * 3 + p.numel()))
            p.grad, q.grad = g.clone(), g.clone()
        ours.step(), oracle.step()
    for p, q in zip((a, b, d), ref):
        assert (p - q).abs().max() < 1e-6


def test_8bit_reset_is_exact_and_8bit_tracks_32bit():
    pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(0)
    p8 = nn.Parameter(torch.randn(64, 96))
    p32, p0 = nn.Parameter(p8.detach().clone()), p8.detach().clone()
    o8 = SwitchAdamW([{"params": [p8], "per": "col"}], lr=1e-3, optim_bits=8)
    o32 = SwitchAdamW([{"params": [p32], "per": "col"}], lr=1e-3)
    for t in range(5):
        g = torch.randn(64, 96, generator=torch.Generator().manual_seed(t))
        p8.grad, p32.grad = g.clone(), g.clone()
        o8.step(), o32.step()
    assert o8.state[p8]["exp_avg"].dtype == torch.uint8
    assert (p8 - p32).abs().max() < 0.1 * (p32 - p0).abs().max(), "8-bit moments stay close to 32-bit ones"
    m_before, v_before = (x.clone() for x in o8._moments(o8.state[p8], p8))
    o8.reset(p8, torch.tensor([3, 40]), 1)
    m, v = o8._moments(o8.state[p8], p8)
    assert (m[:, [3, 40]] == 0).all() and (v[:, [3, 40]] == 0).all()
    keep = [k for k in range(96) if k not in (3, 40)]
    assert torch.equal(m[:, keep], m_before[:, keep]) and torch.equal(v[:, keep], v_before[:, keep])
    assert o8.state[p8]["step"][0, 3] == 0 and o8.state[p8]["step"][0, 4] == 5


def test_schedule_formula_hand_values():
    # interval(t) = 40 / 0.3 ** ((t + 1) / D): at t = D - 1 the frequency is 0.3x its base
    assert math.isclose(switch_interval(99, 40, 100), 40 / 0.3)
    assert math.isclose(expected_switches(0, 256, 40, 4000), 256 / 40 * 0.3 ** (1 / 4000))
    draws = [switch_count(5, 4, 40, 1e9, seed) for seed in range(2000)]  # mean 0.1 -> 0 or 1
    assert set(draws) == {0, 1} and abs(sum(draws) / 2000 - 0.1) < 0.02


def test_switch_count_over_a_run_follows_the_schedule():
    """Swaps counted over 400 hook calls equal the schedule's draws, whose sum is near the closed-form mean."""
    torch.manual_seed(0)
    holder = nn.Sequential()
    holder.add_module("layers", nn.ModuleList([nn.Sequential(nn.Linear(64, 64, bias=False))]))
    c = MethodConfig(name="switchlora", rank=8, switch_lora_interval=10, adam_warm_step=2, switch_descent_rate=0.25)
    total = 400
    model = METHOD.prepare(holder, c)
    opt = METHOD.build_optimizer(model, c)
    hooks = METHOD.loop_hooks(model, opt, c, total_steps=total)
    layer = switchlora_layers(model)[0]
    for step in range(1, total + 1):
        hooks["after_step"](step)
    drawn = sum(switch_count(t, 8, 10, 100, int(layer.seed)) for t in range(1, total + 1))
    assert layer.switched.tolist() == [drawn, drawn]
    q = 0.3 ** (1 / 100)  # sum over t = 1..400 of r / interval(t) = 0.8 q^(t+1), a geometric series
    mean = 0.8 * q**2 * (1 - q**total) / (1 - q)
    assert abs(drawn - mean) < 4 * math.sqrt(mean), (drawn, mean)


def test_resume_equals_an_uninterrupted_run():
    straight, opt, c, hooks = setup(seed=0)
    train(straight, opt, 12, hooks)
    assert sum(int(m.switched[0]) for m in switchlora_layers(straight)) > 10

    model, opt, c, hooks = setup(seed=0)
    train(model, opt, 5, hooks)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    keys = model.state_dict().keys()
    assert any(k.endswith("candidates_A") for k in keys) and any(k.endswith("frozen_B") for k in keys)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh, opt2, c2, hooks2 = setup(seed=1)  # different init and pools: everything must come from the checkpoint
    fresh.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    train(fresh, opt2, 7, hooks2, start=5)
    a, b = straight.state_dict(), fresh.state_dict()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6


def test_merged_model_reloads_in_vanilla_transformers(tmp_path):
    model, opt, c, hooks = setup()
    train(model, opt, 6, hooks)
    before = logits(model)
    merged = METHOD.merge(model)
    assert not switchlora_layers(merged) and type(merged) is LlamaForCausalLM
    merged.save_pretrained(tmp_path / "m")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    after = logits(reloaded)
    assert (after - before).abs().max() < 1e-5
    assert torch.equal(after, logits(merged))
    names = set(json.loads((tmp_path / "m" / "config.json").read_text()))
    assert "architectures" in names


def test_state_and_pool_bytes_match_hand_count_and_buffers():
    """One 64 x 128 target, rank 8, float32: A 8x128 and B 64x8, two moments each, a step per row/column;
    pools of min(64, 128) = 64 candidates of length 128 (A) and 64 (B)."""
    lin = nn.Sequential()
    lin.add_module("layers", nn.ModuleList([nn.Sequential(nn.Linear(128, 64, bias=False))]))
    c = MethodConfig(name="switchlora", rank=8, offload_candidates=False)
    assert METHOD.state_bytes(lin, c) == 4 * 2 * (8 * 128 + 64 * 8) + 4 * (8 + 8)
    pools = 4 * 64 * (128 + 64)
    book = 2 * 8 * 8 + 2 * 8 * 4 + 2 * 8 + 2 * 8 + 8
    assert METHOD.other_bytes(lin, c) == {"device": pools + book, "cpu": 0}
    assert METHOD.other_bytes(lin, MethodConfig(name="switchlora", rank=8)) == {"device": book, "cpu": pools}
    model = METHOD.prepare(lin, c)
    layer = switchlora_layers(model)[0]
    assert sum(b.nbytes for b in layer.buffers()) == pools + book


def test_offloaded_pools_stay_behind_when_the_model_is_moved_or_cast():
    model = METHOD.prepare(tiny_llama(), cfg(offload_candidates=True))
    model.to(torch.float64)
    layer = switchlora_layers(model)[0]
    assert layer.lora_A.dtype == torch.float64 and layer.candidates_A.dtype == torch.float32
    kept = METHOD.prepare(tiny_llama(), cfg(offload_candidates=False)).to(torch.float64)
    assert switchlora_layers(kept)[0].candidates_A.dtype == torch.float64


@pytest.mark.parametrize("bad, match", [
    (dict(switch_lora_interval=3, adam_warm_step=2), "switch_lora_interval=3"),
    (dict(layerwise=True), "layerwise"),
    (dict(switch_descent_rate=0.0), "switch_descent_rate=0.0"),
])
def test_bad_settings_are_user_errors(bad, match):
    with pytest.raises(UserError, match=match):
        METHOD.prepare(tiny_llama(), cfg(**bad))
