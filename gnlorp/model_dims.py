"""A model's dimensions and the shapes of its nn.Linear layers, from its config alone (light: no torch, no
transformers), so that a rank or a sequence length the model cannot take is refused before anything loads.

- LLaMA (kind: llama) and random encoders (kind: encoder_config): the dims in gnlorp/conf/model/<name>.yaml.
- Pretrained encoders (kind: encoder): the model folder's config.json only (pip:<module>, a local folder, or a
  hub id's copy in the Hugging Face cache), never the weights.

`linear_shapes` names every nn.Linear the way transformers names it in LlamaForCausalLM and in
Bert/RobertaForSequenceClassification (tests/unit/test_model_dims.py compares with the real modules); for any
other architecture it returns None and the checks are left to the loaded model (gnlorp/optim/targets.py).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from typing import Mapping

from . import BLOCK_PATTERN  # the default targets, one definition (light: the package root)

PIP_PREFIX = "pip:"
_BERT_LIKE = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}


def _as_dict(model_cfg) -> dict:
    if hasattr(model_cfg, "items") and not isinstance(model_cfg, dict):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[return-value]
    return dict(model_cfg)


def _local_folder(path: str) -> str | None:
    """The folder of a `pip:<module>` or local model path; None for a hub id (or anything unsure)."""
    if path.startswith(PIP_PREFIX):
        try:
            getter = getattr(importlib.import_module(path[len(PIP_PREFIX):].strip()), "get_model_path", None)
            return str(getter()) if getter else None
        except Exception:  # noqa: BLE001 - the loader says what is wrong, later
            return None
    expanded = os.path.expanduser(path)
    return expanded if os.path.isdir(expanded) else None


def _pretrained_config(path: str) -> dict | None:
    """config.json of a pretrained model (its folder, or a hub id's cached copy), or None."""
    folder = _local_folder(path)
    file = os.path.join(folder, "config.json") if folder else None
    if file is None and not path.startswith(PIP_PREFIX) and not os.path.exists(os.path.expanduser(path)):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
            file = cached if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - not a hub id, or no cache: unsure
            file = None
    try:
        with open(file, encoding="utf-8") as fh:  # type: ignore[arg-type]
            data = json.load(fh)
    except (TypeError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_dims(model_cfg: Mapping) -> dict | None:
    """{"kind", "model_type", hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, vocab_size, max_position_embeddings, pad_token_id} as the model will have them, or None
    when they cannot be known without loading it."""
    cfg = _as_dict(model_cfg)
    kind = cfg.get("kind")
    if kind == "encoder":
        src = _pretrained_config(str(cfg["path"])) if cfg.get("path") else None
        if src is None:
            return None
        model_type = src.get("model_type")
    elif kind in ("llama", "encoder_config"):
        src = cfg
        model_type = "llama" if kind == "llama" else (cfg.get("model_type") or "bert")
    else:
        return None
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    dims = {k: src.get(k) for k in keys}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims.values()):
        return None  # the loader names a missing or bad dimension
    dims.update(kind=kind, model_type=model_type, num_key_value_heads=src.get("num_key_value_heads"),
                max_position_embeddings=src.get("max_position_embeddings"), pad_token_id=src.get("pad_token_id"))
    if kind == "encoder_config" and dims["max_position_embeddings"] is None:
        dims["max_position_embeddings"] = 512  # transformers' BertConfig default
    return dims


def linear_shapes(dims: dict, num_labels: int = 2) -> dict[str, tuple[int, int]] | None:
    """{module name: (out_features, in_features)} of every nn.Linear of the model transformers builds
    (LlamaForCausalLM; Bert/RobertaForSequenceClassification with `num_labels`), or None if unknown."""
    h, f, n = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    shapes: dict[str, tuple[int, int]] = {}
    if dims["model_type"] == "llama":
        heads = dims["num_attention_heads"]
        if h % heads:
            return None
        kv = (dims.get("num_key_value_heads") or heads) * (h // heads)
        for i in range(n):
            p = f"model.layers.{i}."
            shapes.update({p + "self_attn.q_proj": (h, h), p + "self_attn.k_proj": (kv, h),
                           p + "self_attn.v_proj": (kv, h), p + "self_attn.o_proj": (h, h),
                           p + "mlp.gate_proj": (f, h), p + "mlp.up_proj": (f, h), p + "mlp.down_proj": (h, f)})
        shapes["lm_head"] = (dims["vocab_size"], h)
        return shapes
    family = _BERT_LIKE.get(dims["model_type"])
    if family is None:
        return None
    prefix = "roberta" if family == "roberta" else "bert"
    for i in range(n):
        p = f"{prefix}.encoder.layer.{i}."
        shapes.update({p + "attention.self.query": (h, h), p + "attention.self.key": (h, h),
                       p + "attention.self.value": (h, h), p + "attention.output.dense": (h, h),
                       p + "intermediate.dense": (f, h), p + "output.dense": (h, f)})
    if family == "roberta":
        shapes.update({"classifier.dense": (h, h), "classifier.out_proj": (num_labels, h)})
    else:
        shapes.update({"bert.pooler.dense": (h, h), "classifier": (num_labels, h)})
    return shapes


def target_shapes(shapes: dict[str, tuple[int, int]], pattern: str | None) -> dict[str, tuple[int, int]]:
    """The targets a low-rank method picks among `shapes` (as gnlorp/optim/targets.py does on the model)."""
    regex = re.compile(pattern or BLOCK_PATTERN)
    return {name: shape for name, shape in shapes.items() if regex.search(name)}


def longest_sequence(dims: dict) -> int | None:
    """The most tokens one sequence may hold: max_position_embeddings (RoBERTa's positions start after the
    padding index, so two fewer)."""
    most = dims.get("max_position_embeddings")
    if not isinstance(most, int):
        return None
    if _BERT_LIKE.get(dims["model_type"]) == "roberta":
        pad = dims.get("pad_token_id")
        most -= (1 if pad is None else int(pad)) + 1  # RobertaConfig's pad_token_id defaults to 1
    return most
