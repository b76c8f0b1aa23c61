"""ReLoRA: a merge-and-reset leaves the model's function unchanged and resets only the factors' moments,
the jagged cosine follows its formula, resume is exact across a reset, the merged model reloads in vanilla
transformers, and the state bytes match the analytic count."""

import io
import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from gnlorp.errors import UserError
from gnlorp.methods import MethodConfig, get_method
from gnlorp.optim.relora import jagged_cosine, prune_optimizer_state, relora_layers
from gnlorp.train import warmup_cosine

METHOD = get_method("relora")


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=64))


def cfg(**kw):
    base = dict(name="relora", lr=1e-2, rank=4, lora_alpha=8.0, lora_dropout=0.0, relora_reset_every=4,
                relora_restart_warmup=2)
    return MethodConfig(**{**base, **kw})


def batch(i=0):
    ids = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(100 + i))
    return {"input_ids": ids, "labels": ids}


def setup(seed=0, total=12, **kw):
    c = cfg(**kw)
    model = METHOD.prepare(tiny_llama(seed), c)
    opt = METHOD.build_optimizer(model, c)
    hooks = METHOD.loop_hooks(model, opt, c, total_steps=total, warmup_ratio=0.1, min_lr_ratio=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hooks["lr_lambda"])
    return model, opt, sched, hooks


def train(model, opt, sched, hooks, steps, start=0):
    model.train()
    for s in range(start, start + steps):
        model(**batch(s)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        hooks["after_step"](s + 1)


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(**batch(99)).logits


def test_merge_and_reset_leave_the_function_unchanged_and_reset_only_the_factors():
    plain_logits = logits(tiny_llama())
    model, opt, sched, hooks = setup()
    assert (logits(model) - plain_logits).abs().max() < 1e-6, "B starts at zero"
    train(model, opt, sched, hooks, 3)
    layer = relora_layers(model)[0]
    head = model.lm_head.weight
    a, b, w = (t.detach().clone() for t in (layer.lora_A, layer.lora_B, layer.weight))
    head_state = {k: v.clone() for k, v in opt.state[head].items()}
    step_a = opt.state[layer.lora_A]["step"].clone()
    assert b.abs().max() > 0 and opt.state[layer.lora_A]["exp_avg"].abs().max() > 0
    before = logits(model)
    hooks["after_step"](4)  # the 4th step: merge, re-init, reset
    assert (logits(model) - before).abs().max() < 1e-5
    assert torch.allclose(layer.weight, w + b @ a * layer.scaling, atol=1e-7)
    assert (layer.lora_B == 0).all() and not torch.equal(layer.lora_A, a) and int(layer.resets) == 1
    bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(n), 1/sqrt(n))
    assert layer.lora_A.abs().max() <= bound
    for p in (layer.lora_A, layer.lora_B):
        assert (opt.state[p]["exp_avg"] == 0).all() and (opt.state[p]["exp_avg_sq"] == 0).all()
    assert torch.equal(opt.state[layer.lora_A]["step"], step_a), "the reference keeps the step count"
    for k, v in head_state.items():
        assert torch.equal(opt.state[head][k], v), "dense parameters keep their moments"
    hooks["after_step"](5)
    assert int(layer.resets) == 1, "only every K-th step"


def test_a_skipped_step_k_still_merges_with_the_restart_of_the_schedule():
    """train.on_nonfinite=skip and a NaN loss at step K = 4: the schedule restarts after step 4 all the same
    (lr_lambda counts steps), and so does the merge: B is zero after it and step 5 trains fresh factors."""
    from gnlorp.train import LoopConfig, TrainData, TrainLoop

    c = cfg()
    model = METHOD.prepare(tiny_llama(), c)
    opt = METHOD.build_optimizer(model, c)
    hooks = METHOD.loop_hooks(model, opt, c, total_steps=6, warmup_ratio=0.1, min_lr_ratio=0.1)
    ids = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(1))
    seen = {}

    def collate(idx):  # step 4's labels are all ignored: the loss is NaN
        return {"input_ids": ids[idx], "labels": torch.full_like(ids[idx], -100) if loop.pos.step == 3 else ids[idx]}

    def on_log(step, values):
        seen[step] = (values["lr"], int(relora_layers(model)[0].resets), bool((relora_layers(model)[0].lora_B == 0).all()))

    loop_cfg = LoopConfig(total_steps=6, batch_size=4, micro_batch_size=4, progress=False, eval_at_epoch_end=False,
                          on_nonfinite="skip", warmup_ratio=0.1, min_lr_ratio=0.1)
    data = TrainData(4, collate, lambda b: b["input_ids"].numel())
    loop = TrainLoop(model, opt, data, loop_cfg, evaluate=lambda m: {}, on_log=on_log, on_eval=lambda *a: None,
                     device=torch.device("cpu"), **hooks)
    assert loop.run().skipped == 1
    assert [seen[s][1:] for s in (3, 4, 5)] == [(0, False), (1, True), (1, False)]
    assert seen[5][0] == pytest.approx(c.lr * hooks["lr_lambda"](4)) and hooks["lr_lambda"](4) < hooks["lr_lambda"](3)


def test_magnitude_pruning_zeroes_the_smallest_fraction():
    p = nn.Parameter(torch.zeros(10))
    opt = torch.optim.AdamW([p])
    opt.state[p]["exp_avg"] = torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)
    opt.state[p]["exp_avg_sq"] = torch.arange(10.0, 0.0, -1.0)
    prune_optimizer_state(opt, [p], 0.7)
    assert opt.state[p]["exp_avg"].tolist() == [0] * 7 + [-8, 9, -10]
    assert opt.state[p]["exp_avg_sq"].tolist() == [10, 9, 8] + [0] * 7


def test_8bit_reset_restarts_the_moments_exactly():
    """After the reset, one more 8-bit step leaves the same moments as a fresh AdamW8bit's first step."""
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    p, fresh = nn.Parameter(torch.randn(64, 96)), nn.Parameter(torch.randn(64, 96))
    opt, ref = bnb.optim.AdamW8bit([p]), bnb.optim.AdamW8bit([fresh])
    for t in range(3):
        p.grad = torch.randn(64, 96, generator=torch.Generator().manual_seed(t))
        opt.step()
    prune_optimizer_state(opt, [p], 1.0)
    g = torch.randn(64, 96, generator=torch.Generator().manual_seed(7))
    p.grad, fresh.grad = g.clone(), g.clone()
    opt.step(), ref.step()
    for key in ("state1", "state2", "absmax1", "absmax2"):
        assert torch.equal(opt.state[p][key], ref.state[fresh][key]), key


def test_jagged_cosine_hand_values():
    f = jagged_cosine(total_steps=100, warmup_ratio=0.1, min_ratio=0.1, reset_every=30, restart_warmup=5)
    plain = warmup_cosine(100, 0.1, 0.1)
    cosine = lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90))  # noqa: E731
    assert f(0) == 0.1 and f(9) == 1.0
    for s in list(range(10, 30)) + list(range(35, 60)) + list(range(95, 100)):
        assert f(s) == pytest.approx(plain(s)) == pytest.approx(cosine(s))
    # after the reset that follows step 30: 1/5, 2/5, ... of the cosine's value at step 35
    assert [f(30 + i) for i in range(5)] == pytest.approx([(i + 1) / 5 * cosine(35) for i in range(5)])
    assert f(60) == pytest.approx(cosine(65) / 5)
    never = jagged_cosine(100, 0.1, 0.1, reset_every=1000, restart_warmup=5)
    assert [never(s) for s in range(100)] == [plain(s) for s in range(100)]


def test_resume_across_a_reset_equals_an_uninterrupted_run():
    straight, opt, sched, hooks = setup()
    train(straight, opt, sched, hooks, 10)
    assert int(relora_layers(straight)[0].resets) == 2
    model, opt, sched, hooks = setup()
    train(model, opt, sched, hooks, 6)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh, opt2, sched2, hooks2 = setup(seed=1)
    fresh.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    train(fresh, opt2, sched2, hooks2, 4, start=6)
    a, b = straight.state_dict(), fresh.state_dict()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6


def test_merged_model_reloads_in_vanilla_transformers(tmp_path):
    model, opt, sched, hooks = setup()
    train(model, opt, sched, hooks, 6)
    before = logits(model)
    merged = METHOD.merge(model)
    assert not relora_layers(merged)
    merged.save_pretrained(tmp_path / "m")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    assert (logits(reloaded) - before).abs().max() < 1e-5
    assert torch.equal(logits(reloaded), logits(merged))


def test_state_bytes_hand_count():
    """One 64 x 128 target, rank 8, float32, torch AdamW: A 8x128 and B 64x8, two moments and a step each."""
    lin = nn.Sequential()
    lin.add_module("layers", nn.ModuleList([nn.Sequential(nn.Linear(128, 64, bias=False))]))
    assert METHOD.state_bytes(lin, cfg(rank=8)) == 4 * 2 * (8 * 128 + 64 * 8) + 2 * 4


@pytest.mark.parametrize("bad, match", [
    (dict(relora_reset_every=0), "relora_reset_every=0"),
    (dict(relora_restart_warmup=9), "relora_restart_warmup=9"),
    (dict(relora_prune=1.5), "relora_prune=1.5"),
    (dict(relora_prune=0.9, optim_bits=8), "relora_prune=0.9"),
])
def test_bad_settings_are_user_errors(bad, match):
    with pytest.raises(UserError, match=match):
        METHOD.prepare(tiny_llama(), cfg(**bad))


def test_reset_before_the_first_warmup_ends_is_a_user_error():
    c = cfg(relora_reset_every=4)
    model = METHOD.prepare(tiny_llama(), c)
    with pytest.raises(UserError, match="relora_reset_every=4"):
        METHOD.loop_hooks(model, METHOD.build_optimizer(model, c), c, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
