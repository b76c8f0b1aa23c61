"""Every value checked before any work: the accepted values declared in gnlorp/schema.py, the relations
between keys, and the output locations. Light: no torch, no transformers.

`check_config(cfg, world_size)` raises a UserError naming the key, the value and what is accepted, or
returns the derived settings (learning rate, scale, micro-batch, accumulation).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import ListConfig

from .errors import UserError
from .schema import MethodSettings, RunSettings

NAME_MAX = 255          # bytes in one file name (ext4, xfs, apfs ...)
_RESULT_SUFFIX = ".json.tmp-4194304"  # the longest name the runner writes for a result (atomic write's temp file)


def _shown(value: Any) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def _bounds_text(a: dict) -> str:
    parts = []
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in a:
            parts.append(f"{sym} {a[key]}")
    return " and ".join(parts)


def _check_value(key: str, value: Any, a: dict) -> None:
    if value is None:
        if "choices" in a and None not in a["choices"]:
            raise UserError(f"{key}=null is not accepted; {key} accepts {', '.join(map(_shown, a['choices']))}.")
        return  # Optional fields: null means "not set" (the schema's types say which may be null)
    if "choices" in a and value not in a["choices"]:
        raise UserError(f"{key}={_shown(value)} is not accepted; {key} accepts {', '.join(map(_shown, a['choices']))}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if a.get("finite") and not math.isfinite(value):
            raise UserError(f"{key}={value} must be a finite number.")
        bounds = _bounds_text(a)
        ok = all((
            "ge" not in a or value >= a["ge"], "gt" not in a or value > a["gt"],
            "le" not in a or value <= a["le"], "lt" not in a or value < a["lt"],
        ))
        if not ok:
            raise UserError(f"{key}={value} is out of range; {key} must be {bounds}.")
    if isinstance(value, (list, tuple)):
        if "length" in a and len(value) != a["length"]:
            raise UserError(f"{key}={list(value)} must hold {a['length']} values.")
        for v in value:
            if not isinstance(v, (int, float)) or not (a.get("each_ge", -math.inf) <= v < a.get("each_lt", math.inf)):
                raise UserError(f"{key}={list(value)}: each value must be a number >= {a.get('each_ge')} and "
                                f"< {a.get('each_lt')}.")
    if a.get("regex") and isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise UserError(f"{key}={value!r} is not a valid regular expression ({exc}); pass a Python regex over "
                            f"module names, e.g. {key}='.*(q_proj|v_proj)$'.") from None
    if "regex_match" in a and isinstance(value, str) and not re.fullmatch(a["regex_match"], value):
        raise UserError(f"{key}={value!r} may hold only letters, digits and . _ = + - (it names files).")


def check_schema_values(cfg, schema=RunSettings, prefix: str = "") -> None:
    """The accepted values declared in the schema's field metadata, for every key."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = cfg.get(f.name) if hasattr(cfg, "get") else getattr(cfg, f.name)
        if isinstance(value, ListConfig):
            value = list(value)
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Settings")):
            sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            sub_schema = type(sub()) if sub else f.type
            if issubclass(sub_schema, MethodSettings):  # the chosen method's own settings class (its keys)
                from .methods import SPECS

                sub_schema = SPECS[value.name].settings
            check_schema_values(value, sub_schema, prefix=f"{key}.")
            continue
        _check_value(key, value, f.metadata.get("accepts", {}))


# --------------------------------------------------------------------------------------- derived values
def learning_rate(cfg) -> float:
    """The peak learning rate: train.lr, else the task's recipe for the method, times train.lr_factor."""
    lr = _base_learning_rate(cfg) * float(cfg.train.lr_factor)
    return float(f"{lr:.12g}")  # 1e-2 x 0.3 and 3e-3 are one learning rate (and one run identity)


def _base_learning_rate(cfg) -> float:
    if cfg.train.lr is not None:
        return float(cfg.train.lr)
    table = cfg.task.lr or {}
    if cfg.method.name not in table:
        raise UserError(f"task {cfg.task.name!r} has no learning rate for method {cfg.method.name!r}; pass train.lr=...")
    lr = table[cfg.method.name]
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise UserError(f"task.lr.{cfg.method.name}={lr} must be a positive number.")
    return float(lr)


def galore_scale(cfg) -> float:
    """scale= if given, else the task's alpha for this rank (task.alpha[<rank>], else task.alpha.default)."""
    if cfg.scale is not None:
        return float(cfg.scale)
    table = cfg.task.alpha or {}
    value = table.get(str(cfg.rank), table.get("default"))
    if value is None:
        return 1.0
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"task.alpha for rank {cfg.rank} is {value}; it must be a positive number.")
    return float(value)


def _relations(cfg, world_size: int) -> dict:
    t = cfg.train
    if t.batch_size % world_size:
        raise UserError(f"train.batch_size={t.batch_size} must be divisible by the {world_size} processes.")
    per_process = t.batch_size // world_size
    micro = t.micro_batch_size or per_process
    if per_process % micro:
        raise UserError(f"train.micro_batch_size={micro} must divide the batch of each process (train.batch_size="
                        f"{t.batch_size} / {world_size} process(es) = {per_process}); e.g. "
                        f"train.micro_batch_size={math.gcd(per_process, micro)}.")
    if t.stop_at_step is not None and t.max_steps is not None and t.stop_at_step > t.max_steps:
        raise UserError(f"train.stop_at_step={t.stop_at_step} is after the last step (train.max_steps={t.max_steps}); "
                        f"pass a smaller value or null.")
    layerwise = bool(cfg.method.layerwise)
    if layerwise and t.grad_clip > 0:
        raise UserError("method.layerwise=true steps each weight inside backward, so no global gradient norm exists "
                        "to clip; set train.grad_clip=0.")
    if layerwise and world_size > 1 and t.parallel == "fsdp":
        raise UserError("method.layerwise=true cannot be combined with train.parallel=fsdp (its hooks would step each "
                        "weight before FSDP reduce-scatters the gradient); set method.layerwise=false.")
    if world_size > 1 and t.parallel == "fsdp":
        from .methods import SPECS

        refusal = SPECS[cfg.method.name].fsdp_refusal
        if refusal:
            raise UserError(f"method={cfg.method.name} cannot run with train.parallel=fsdp ({refusal}); use "
                            "train.parallel=ddp.")
    if t.fsdp_mixed_precision and (t.parallel != "fsdp" or cfg.device == "cpu"):
        raise UserError(f"train.fsdp_mixed_precision=true needs train.parallel=fsdp on GPUs (train.parallel="
                        f"{t.parallel}, device={cfg.device}); set train.fsdp_mixed_precision=false, or use "
                        "precision.autocast on the CPU.")
    if layerwise and world_size > 1:
        raise UserError("method.layerwise=true cannot be combined with DDP (the step would run before the gradient "
                        "all-reduce); run on one process or set method.layerwise=false.")
    if cfg.task.family == "c4":
        _c4_relations(cfg, world_size)
    if cfg.task.family == "c4" and cfg.model.kind != "llama":
        raise UserError(f"task=c4 pre-trains a LLaMA; model={cfg.model.name} is an encoder: pick model=llama_20m "
                        f"(or another llama_*).")
    if cfg.task.family == "glue" and cfg.model.kind == "llama":
        raise UserError(f"GLUE fine-tunes an encoder; model={cfg.model.name} is a LLaMA: pick model=minilm, "
                        f"roberta-base or bert_tiny.")
    return {"micro_batch_size": micro, "accumulation_steps": per_process // micro}


def _c4_relations(cfg, world_size: int) -> None:
    t, streams = cfg.train, cfg.task.streams
    if t.max_steps is None:
        raise UserError("train.max_steps=null: C4 is streamed without epochs, so the number of training tokens is "
                        "max_steps x batch_size x seq_len; set train.max_steps to a positive integer.")
    if t.group_by_length:
        raise UserError("train.group_by_length=true groups GLUE examples by length; C4 blocks all have task.seq_len "
                        "tokens: drop it.")
    if t.batch_size % streams or streams % world_size:
        raise UserError(f"task.streams={streams} must divide train.batch_size={t.batch_size} and be a multiple of the "
                        f"{world_size} process(es) (each process reads whole streams); e.g. task.streams={world_size}.")


def _check_low_bit(cfg) -> None:
    """torchao's AdamW8bit/AdamW4bit (precision=ao8bit/ao4bit): plain AdamW on every parameter only, torchao
    present and, on the CPU, a C++ compiler for the torch.compile'd step it runs; 4-bit states nowhere else."""
    p, m = cfg.precision, cfg.method
    if p.optim_library is None:
        if p.optim_bits == 4:
            raise UserError(f"precision.optim_bits=4 is torchao's AdamW4bit: set precision.optim_library=torchao "
                            f"(precision=ao4bit, method=full), or use precision=8bit (bitsandbytes).")
        return
    if p.optim_bits not in (4, 8):
        raise UserError(f"precision.optim_library=torchao keeps 8- or 4-bit states, not {p.optim_bits}-bit: use "
                        f"precision=ao8bit or precision=ao4bit, or precision=bf16 for 32-bit AdamW.")
    if m.name != "full" or getattr(m, "layerwise", False):
        what = "method.layerwise=true" if m.name == "full" else f"method={m.name}"
        raise UserError(f"precision={p.name} (torchao's AdamW{p.optim_bits}bit) trains method=full with plain AdamW, "
                        f"not {what}; for low-bit states there use precision=8bit (bitsandbytes).")
    if cfg.train.parallel == "fsdp":
        raise UserError(f"precision={p.name} (torchao) is not wired for train.parallel=fsdp; use precision=8bit, "
                        f"whose states GaLoreAdamW keeps per shard.")
    torchao_problem = _torchao_problem(cfg.device)
    if torchao_problem:
        raise UserError(f"precision={p.name} cannot run: {torchao_problem}; use precision=8bit (bitsandbytes' "
                        f"AdamW8bit) instead.")


def _torchao_problem(device: str) -> str | None:
    """Why torchao's low-bit AdamW cannot run here (None when it can), found without importing it."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install 'gnlorp[lowbit]')"
    cxx = os.environ.get("CXX") or "g++"
    if device != "cuda" and not (shutil.which(cxx) or shutil.which("c++")):
        return (f"its step is compiled by torch.compile, which on the CPU needs a C++ compiler ({cxx}), and none is "
                "on PATH")
    return None


def _check_bitsandbytes(cfg) -> None:
    if cfg.precision.optim_bits == 8 and cfg.precision.optim_library is None:
        try:
            from .optim.bnb import import_bitsandbytes

            import_bitsandbytes()
        except Exception as exc:
            raise UserError(f"precision=8bit needs a working bitsandbytes >= 0.50, but importing it failed ({exc}); "
                            "pip install 'bitsandbytes>=0.50' or use precision=bf16.") from None


def check_method_name(cfg) -> None:
    """The method exists, and method.name agrees with the method group's schema (method.name=lora over
    method=galore would train LoRA with GaLore's keys)."""
    from omegaconf import OmegaConf

    from .methods import METHODS, SPECS

    name = cfg.method.name
    if name not in METHODS:
        raise UserError(f"method.name={name!r} is not a method; choose one of {', '.join(METHODS)}.")
    chosen = OmegaConf.get_type(cfg.method) if OmegaConf.is_config(cfg.method) else None
    if chosen is not None and issubclass(chosen, MethodSettings) and chosen is not MethodSettings \
            and chosen is not SPECS[name].settings:
        group = next((s.name for s in SPECS.values() if s.settings is chosen), chosen.__name__)
        raise UserError(f"method.name={name!r} does not match the method group ({group}); choose the method with "
                        f"method={name}, not method.name=.")


def _method_relations(cfg) -> None:
    """Relations between a method's own keys, checked again where the method runs
    (gnlorp/methods/<name>.py); here they answer before any data or model is loaded."""
    m = cfg.method
    if m.name == "relora":
        every, rewarm = int(m.relora_reset_every), int(m.relora_restart_warmup)
        if rewarm > every:
            raise UserError(f"method.relora_restart_warmup={rewarm} must be between 0 and relora_reset_every={every} "
                            f"(the re-warm-up happens inside each cycle); lower it or raise relora_reset_every.")
    if m.name == "switchlora":
        if m.layerwise:
            raise UserError("method.layerwise=true is not supported by switchlora (its swaps need the whole step); "
                            "set method.layerwise=false.")
        if m.switch_lora_interval < 2 * max(int(m.adam_warm_step), 1):
            raise UserError(f"method.switch_lora_interval={m.switch_lora_interval} must be at least 2 x "
                            f"adam_warm_step ({2 * int(m.adam_warm_step)}): a vector's counterpart must thaw before "
                            "it is swapped again.")


def _check_task_family_keys(task) -> None:
    """A task key of the other family (task.seq_len on GLUE, task.max_length on C4), set away from its default, would
    change nothing but the run identity: refused, naming the key this family uses."""
    import dataclasses

    from .schema import TaskSettings

    for f in dataclasses.fields(TaskSettings):
        family = f.metadata.get("family")
        if family and family != task.family and task.get(f.name) != f.default:
            ours = [g.name for g in dataclasses.fields(TaskSettings) if g.metadata.get("family") == task.family]
            raise UserError(f"task.{f.name}={task.get(f.name)!r} applies to {family} runs only; this is a "
                            f"{task.family} run, whose task keys are {', '.join(ours)}: drop it.")


def _task_model_relations(cfg) -> None:
    """What the model's dimensions allow (gnlorp/model_dims.py: the model config or its config.json, never the
    weights): the sequence length, the rank of a low-rank method, a target_modules that selects nothing."""
    from .methods import LOW_RANK
    from .model_dims import linear_shapes, longest_sequence, model_dims, target_shapes

    t = cfg.task
    _check_task_family_keys(t)
    if t.family == "c4":
        if t.eval_tokens < t.seq_len:
            raise UserError(f"task.eval_tokens={t.eval_tokens} is less than one block of task.seq_len={t.seq_len} "
                            f"tokens (validation is read in whole blocks); pass task.eval_tokens >= {t.seq_len}.")
        if 0 < t.selection_tokens < t.seq_len:
            raise UserError(f"task.selection_tokens={t.selection_tokens} is less than one block of task.seq_len="
                            f"{t.seq_len} tokens, so no block would be scored; pass 0 or >= {t.seq_len}.")
    dims = model_dims(cfg.model)
    if dims is None:
        return
    most = longest_sequence(dims)
    key, length = ("task.seq_len", t.seq_len) if t.family == "c4" else ("task.max_length", t.max_length)
    if most is not None and length > most:
        raise UserError(f"{key}={length} is longer than model={cfg.model.name} can take (max_position_embeddings: "
                        f"{most} tokens); pass {key}={most} or less, or a model with more positions.")
    if cfg.method.name not in LOW_RANK:
        return
    num_labels = 2
    if t.family == "glue":
        from .tasks.glue import GLUE_TASKS, _spec

        num_labels = _spec(t.name).num_labels if t.name in GLUE_TASKS else 2
    shapes = linear_shapes(dims, num_labels)
    if shapes is None:
        return
    pattern = cfg.method.target_modules
    targets = target_shapes(shapes, pattern)
    if not targets:
        from . import BLOCK_PATTERN

        raise UserError(f"No nn.Linear layer of the model matches target_modules={pattern or BLOCK_PATTERN!r}; "
                        "set method.target_modules to a regex that matches the layers to adapt.")
    name, shape = min(targets.items(), key=lambda kv: min(kv[1]))
    if cfg.rank > min(shape):
        raise UserError(f"rank={cfg.rank} is larger than the smallest target matrix dimension ({min(shape)}: "
                        f"{name} of model={cfg.model.name} is {shape[0]} x {shape[1]}); choose rank <= {min(shape)}.")


def check_config(cfg, world_size: int = 1) -> dict:
    """Everything that can be checked from the config alone; returns the derived settings."""
    check_method_name(cfg)
    check_schema_values(cfg)
    derived = _relations(cfg, world_size)
    _method_relations(cfg)
    _task_model_relations(cfg)
    _check_low_bit(cfg)
    _check_bitsandbytes(cfg)
    return {"lr": learning_rate(cfg), "scale": galore_scale(cfg), **derived}


# --------------------------------------------------------------------------------------- output locations
def check_writable_folder(key: str, folder: str | Path) -> Path:
    """Create the folder if needed and prove a file can be written there (then remove it)."""
    path = Path(os.path.expanduser(str(folder)))
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={str(folder)!r} is a file, not a folder; point {key} at a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gnlorp-write-test-") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UserError(f"{key}={str(folder)!r} cannot be written ({reason.lower()}); point {key} at a writable "
                        f"folder with free space.") from None
    return path


def check_name_length(run_file_stem: str) -> None:
    longest = len((run_file_stem + _RESULT_SUFFIX).encode())
    if longest > NAME_MAX:
        raise UserError(f"the run name {run_file_stem!r} makes file names of {longest} bytes, over the file system's "
                        f"{NAME_MAX}; pass a shorter name=...")


def check_group_choices(choices: dict) -> None:
    """Hydra skips an `optional` group whose option does not exist (experiment=typo would run the defaults)."""
    from .config_groups import group_options

    for group, choice in choices.items():
        if group == "experiment" and choice not in (None, "null") and choice not in group_options(group):
            raise UserError(f"experiment={choice} does not exist; experiment= accepts: "
                            f"{', '.join(group_options(group))}.")
