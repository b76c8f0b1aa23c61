"""A run's identity: the readable name plus a short hash of everything that changes what it trains or reports:
its settings, the data it reads (gnlorp/data_fingerprint.py) and the kind of device it runs on.

The result file is results/<name>-<hash>.json and the checkpoint checkpoints/<name>-<hash>/last.pt, so two
configs that train differently never share a file, `skip_complete` skips only an identical config, and a
resume never continues another config's state. Settings declared with identity=False in gnlorp/schema.py
(paths, logging and evaluation cadence, stop/resume controls) are left out; the effective learning rate
and GaLore scale replace the per-method and per-rank tables they were looked up in, so an edit to the lr
of another method does not change this run's identity. Settings that change nothing in a given run (SwitchLoRA's
pool placement, FSDP's mixed precision off a sharded GPU run, C4's evaluation cadence) are hashed at their
default there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from .schema import UNLESS_DEFAULT, RunSettings

HASH_CHARS = 8


def _leaves(schema=RunSettings, prefix: str = ""):
    """(dotted key, dataclass field) of every setting of `schema`, its nested groups walked."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            yield from _leaves(f.default_factory, f"{key}.")
        else:
            yield key, f


def _training_keys(schema=RunSettings, prefix: str = "") -> tuple[list[str], list[str]]:
    """(identity keys, excluded keys) as dotted paths, from the schema's metadata."""
    leaves = list(_leaves(schema, prefix))
    return ([k for k, f in leaves if f.metadata.get("identity", True)],
            [k for k, f in leaves if not f.metadata.get("identity", True)])


def _added_later(schema=RunSettings, prefix: str = "") -> dict[str, Any]:
    """{dotted key: default} of the settings declared identity=UNLESS_DEFAULT (schema module docstring)."""
    return {k: f.default for k, f in _leaves(schema, prefix) if f.metadata.get("identity") == UNLESS_DEFAULT}


IDENTITY_KEYS, EXCLUDED_KEYS = _training_keys()  # with the keys every method has (schema.MethodSettings)


def identity_keys(method: str) -> list[str]:
    """IDENTITY_KEYS with the method's own keys (its settings class) in place of the common ones."""
    from .methods import SPECS

    own, _ = _training_keys(SPECS[method].settings, "method.") if method in SPECS else ([], [])
    return [k for k in IDENTITY_KEYS if not k.startswith("method.")] + own


def _get(container: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(container, dict) or part not in container:
            return None
        container = container[part]
    return container


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What changes a run besides its config: the data it reads and where it runs."""

    data_digest: str | None = None  # gnlorp/data_fingerprint.py; None or a REFERENCE digest: kept out of the hash
    device_kind: str = "cpu"        # cpu | cuda
    sharded: bool = False           # FSDP over several processes


def _without_effect(context: RunContext) -> list[str]:
    """Settings that change neither training nor the report of this run: they are hashed at their default, so
    a change of them neither makes another identity nor moves the results written before this was known."""
    keys = ["method.offload_candidates"]  # SwitchLoRA's pools in CPU or accelerator memory: the same numbers
    if not (context.device_kind == "cuda" and context.sharded):
        keys.append("train.fsdp_mixed_precision")  # only FSDP on GPUs casts
    return keys


def training_settings(resolved: dict, derived: dict, uses_rank: bool = True, uses_scale: bool = True,
                      context: RunContext = RunContext()) -> dict:
    """{dotted key: value} of everything that changes training or the reported result (see the module docstring):
    the chosen method's own keys only. A method that ignores the rank (full training) or GaLore's scale (LoRA)
    is not told apart by them."""
    from .data_fingerprint import REFERENCE

    method = _get(resolved, "method.name")
    settings = {key: _get(resolved, key) for key in identity_keys(method)}
    defaults = _defaults(method)
    for key in _without_effect(context):
        if key in settings:
            settings[key] = defaults[key]
    if _get(resolved, "task.family") == "c4":
        settings.pop("train.eval_every", None)  # C4 reports its last evaluation, whatever the cadence
    for key, default in _defaults_of_added_keys(method).items():
        if key in settings and settings[key] == default:
            del settings[key]
    if context.data_digest is not None and context.data_digest not in REFERENCE:
        settings["data"] = context.data_digest
    if context.device_kind != "cpu":  # every result before this was known ran on a CPU
        settings["device"] = context.device_kind
    settings.pop("task.lr")
    settings.pop("task.alpha")
    settings["train.lr"] = derived["lr"]
    settings["scale"] = derived["scale"]
    if not uses_rank:
        settings.pop("rank")
    if not uses_scale:
        settings.pop("scale")
    return settings


def _defaults(method: str) -> dict[str, Any]:
    """{dotted key: default} of every setting, the method's own keys included."""
    from .methods import SPECS

    schemas = [(RunSettings, "")] + ([(SPECS[method].settings, "method.")] if method in SPECS else [])
    return {k: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for schema, prefix in schemas for k, f in _leaves(schema, prefix)}


def _defaults_of_added_keys(method: str) -> dict[str, Any]:
    from .methods import SPECS

    own = _added_later(SPECS[method].settings, "method.") if method in SPECS else {}
    return {**{k: v for k, v in _added_later().items() if not k.startswith("method.")}, **own}


def identity_hash(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def config_hash(resolved: dict) -> str:
    """Hash of the whole resolved config (recorded beside the identity; changes with any key)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def readable_name(cfg, low_rank: bool) -> str:
    if cfg.name:
        return str(cfg.name)
    task = f"glue-{cfg.task.name}" if cfg.task.family == "glue" else cfg.task.name
    rank = f"-r{cfg.rank}" if low_rank else ""
    samples = cfg.task.max_train_samples
    subset = f"-n{samples}" if samples else ""  # a train subset is another experiment than the whole split
    return f"{task}-{cfg.model.name}-{cfg.method.name}{rank}-{cfg.precision.name}{subset}-s{cfg.seed}"


def differing_keys(mine: dict, theirs: dict) -> list[str]:
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


def describe_differences(mine: dict, theirs: dict, keys: list[str], limit: int = 6) -> str:
    shown = [_describe(k, theirs.get(k), mine.get(k)) for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def _describe(key: str, before, now) -> str:
    if key == "data":  # digests: None stands for the shared data (data_fingerprint.REFERENCE)
        return f"the data read from task.data_dir ({before or 'the shared data'} -> {now or 'the shared data'})"
    return f"{key} {before!r} -> {now!r}"
