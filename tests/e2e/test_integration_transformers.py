"""gnlorp.integrations.transformers under a real transformers.Trainer: resuming from a mid-run checkpoint
gives the parameters of the uninterrupted run, and every checkpoint is a vanilla one for from_pretrained."""

import copy
import inspect

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback,
    TrainingArguments,
)

from gnlorp.errors import UserError
from gnlorp.integrations.transformers import galore, gradnormlorp
from gnlorp.optim import GaLoreAdamW, GaLoreAdamW8bit, WeightNormLinear, galore_param_groups, merge_weight_norm

STEPS, SAVE_EVERY, BATCH = 6, 3, 4
# hidden 64, MLP 128, rank 32: the MLP's projected moments (128 x 32) and the 128 x 64 embedding reach
# min_8bit_size = 4096 elements, so the 8-bit runs hold real uint8 moments next to float ones.
RANK = 32


def tiny(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(
            vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64))


def dataset(kind):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (BATCH * STEPS, 12), generator=g)
    labels = torch.randint(0, 2, (len(ids),), generator=g) if kind == "bert" else ids
    return [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]


PROBE = torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(2))


def logits(model):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=PROBE).logits
    model.train(was_training)
    return out


class RecordLogits(TrainerCallback):
    """At every save: the logits of the model as trained and of its merged (vanilla) copy."""

    def __init__(self):
        self.at = {}

    def on_save(self, args, state, control, model=None, **kw):
        self.at[state.global_step] = (logits(model), logits(merge_weight_norm(copy.deepcopy(model))))


def args(tmp_path, name):
    return TrainingArguments(
        output_dir=str(tmp_path / name), max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=3e-3,
        weight_decay=0.01, save_strategy="steps", save_steps=SAVE_EVERY, report_to=[], use_cpu=True, seed=0,
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )


def trainer(kind, method, a, seed=0, callbacks=()):
    model = tiny(kind, seed)
    factory, bits = {"galore32": (galore, 32), "galore8": (galore, 8), "gradnormlorp": (gradnormlorp, 32)}[method]
    pair = factory(model, a, rank=RANK, optim_bits=bits, update_proj_gap=2)  # gap 2: refreshes on both sides of the resume
    return Trainer(model=model, args=a, train_dataset=dataset(kind), optimizer_cls_and_kwargs=pair,
                   callbacks=list(callbacks))


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("method", ["galore32", "galore8", "gradnormlorp"])
def test_trainer_resumes_exactly_and_checkpoints_load_as_vanilla_models(tmp_path, kind, method):
    auto = BertForSequenceClassification if kind == "bert" else LlamaForCausalLM
    record = RecordLogits()
    full = trainer(kind, method, args(tmp_path, "full"), callbacks=[record])
    initial = params(full.model)
    full.train()
    trained = params(full.model)
    full.save_model(str(tmp_path / "final"))
    record.at["final"] = record.at[STEPS]
    assert (method == "gradnormlorp") == any(isinstance(m, WeightNormLinear) for m in full.model.modules())
    states = full.optimizer.state.values()
    assert sum("proj_left" in s or "proj_right" in s for s in states) == (12 if kind == "bert" else 14)
    if method == "galore8":
        assert any(s["exp_avg"].dtype == torch.uint8 for s in full.optimizer.state.values())

    # Every checkpoint is a vanilla model: no missing or unexpected keys, the merged model's logits exactly.
    for step, folder in [(SAVE_EVERY, "full/checkpoint-3"), (STEPS, "full/checkpoint-6"), ("final", "final")]:
        loaded, info = auto.from_pretrained(str(tmp_path / folder), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        assert not any(isinstance(m, WeightNormLinear) for m in loaded.modules())
        as_trained, merged = record.at[step]
        assert torch.equal(logits(loaded), merged)
        torch.testing.assert_close(logits(loaded), as_trained, atol=1e-5, rtol=0)

    if method == "gradnormlorp":
        # A merged state dict loads strictly into a reparameterized model (as load_best_model_at_end does) as
        # V = W, g = ||W||_row: the same function.
        fresh = trainer(kind, method, args(tmp_path, "unused"), seed=1).model
        fresh.load_state_dict(load_file(str(tmp_path / "final/model.safetensors")), strict=True)
        torch.testing.assert_close(logits(fresh), record.at["final"][1], atol=1e-5, rtol=0)

    # Resume from the mid-run checkpoint into a differently initialized model: the uninterrupted run's
    # parameters (for GradNormLoRP its exact direction and magnitude), within 1e-6.
    resumed = trainer(kind, method, args(tmp_path, "full"), seed=1)
    assert any((initial[n] != p).any() for n, p in resumed.model.named_parameters())
    resumed.train(resume_from_checkpoint=str(tmp_path / "full/checkpoint-3"))
    after = params(resumed.model)
    assert after.keys() == trained.keys()
    moved = max((trained[n] - initial[n]).abs().max().item() for n in trained)
    assert moved > 1e-3  # the run trained, so agreement below is not trivial
    for n in trained:
        torch.testing.assert_close(after[n], trained[n], atol=1e-6, rtol=0, msg=n)


def test_targets_are_selected_on_encoder_and_decoder_families():
    for kind, block in [("bert", ".encoder.layer."), ("llama", "model.layers.")]:
        model = tiny(kind)
        projected = next(g for g in galore_param_groups(model, rank=4) if "rank" in g)["params"]
        expected = [m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and block in n]
        assert len(expected) == (12 if kind == "bert" else 14)
        assert [id(p) for p in projected] == [id(p) for p in expected]


def test_empty_selection_is_refused():
    a = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    for factory in (galore, gradnormlorp):
        with pytest.raises(UserError, match="target_modules='nothing_matches'"):
            factory(tiny("bert"), a, rank=4, target_modules="nothing_matches")
    with pytest.raises(ValueError, match="projected param group .* has no parameters"):
        GaLoreAdamW([{"params": [nn.Parameter(torch.ones(3))]}, {"params": [], "rank": 4}])


def test_layerwise_is_refused_and_a_reused_pair_is_loud():
    a = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    with pytest.raises(UserError, match="layerwise=True cannot run under transformers.Trainer"):
        galore(tiny("llama"), a, rank=4, layerwise=True)
    model = tiny("llama")
    cls, kwargs = galore(model, a, rank=4)
    kwargs.pop("params")  # what Trainer does with the pair: a second Trainer would get its own plain groups
    with pytest.raises(UserError, match="once per Trainer"):
        cls([{"params": list(model.parameters())}], **kwargs)


def test_8bit_and_32bit_defaults_are_the_same_recipe():
    def defaults(cls):
        return {k: v.default for k, v in inspect.signature(cls).parameters.items() if k in ("lr", "betas", "eps", "weight_decay")}

    import galore_torch  # the reference: galore-torch's 32-bit defaults (its 8-bit class has others)

    assert defaults(GaLoreAdamW8bit) == defaults(GaLoreAdamW) == defaults(galore_torch.GaLoreAdamW)
    assert defaults(GaLoreAdamW)["eps"] == 1e-6 and defaults(GaLoreAdamW)["weight_decay"] == 0.0
    p = nn.Parameter(torch.ones(4, 4))
    assert GaLoreAdamW8bit([p]).defaults == {**GaLoreAdamW([p]).defaults}
