"""The config schema: every setting of a run declared once, with its type, default and accepted values.

Hydra composes gnlorp/conf/*.yaml (values only) over these dataclasses (registered in Hydra's ConfigStore by
`register()`), so an unknown key or a value of the wrong type is refused while composing; `gnlorp.checks`
then applies the ranges, choices and relations declared here, before anything heavy is imported.

Each field's metadata says:
- `help`: what it does (shown by `python run.py --help` through the YAML comments, and in error lines);
- `accepts`: the accepted values, checked by gnlorp.checks (ge/gt/le/lt bounds, `choices`, `regex`);
- `identity`: whether the setting changes what a run trains (default True). Settings with identity=False
  (paths, logging and evaluation cadence, stop/resume controls) are left out of the run identity, so
  changing them neither creates another result file nor blocks a resume. A setting added after results
  exist declares identity=UNLESS_DEFAULT: at its default it trains as before it existed, so it stays out of
  the hash there and those results keep their identity (skip_complete still finds them).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, List, Optional

UNLESS_DEFAULT = "unless_default"  # identity= of a setting added later (module docstring)
SEED_LIMIT = 2**31  # torch, numpy and Python generators all accept [0, 2**31); the loop derives seeds from it


def setting(default: Any = MISSING, help: str = "", *, identity: bool | str = True, factory=None,
            family: str | None = None, **accepts):
    """A dataclass field with its documentation and accepted values (see the module docstring); `family`: the one
    task family (glue or c4) a task key applies to (set on a run of the other, it is refused)."""
    metadata = {"help": help, "identity": identity, "accepts": accepts, "family": family}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainSettings:
    lr: Optional[float] = setting(None, "peak learning rate; null: the task's recipe for the method (task.lr)",
                                  gt=0, finite=True)
    lr_factor: float = setting(1.0, "multiplies the peak learning rate (train.lr or task.lr): one grid for every "
                               "method around its own recipe, e.g. -m train.lr_factor=0.3,1,3", identity=False,
                               gt=0, finite=True)
    lr_choice: str = setting(
        "given", "given: train.lr or task.lr, times lr_factor; selection: the rate that this config's complete "
                 "learning-rate grid in results_dir chose on its selection split (e.g. for more seeds)",
        identity=False, choices=("given", "selection"))
    epochs: int = setting(1, "passes over the training data (GLUE); capped by max_steps", ge=1)
    max_steps: Optional[int] = setting(None, "optimizer steps; caps epochs when both are set", ge=1)
    batch_size: int = setting(32, "examples per optimizer step, over all processes", ge=1)
    micro_batch_size: Optional[int] = setting(
        None, "examples per forward pass; null: batch_size / processes (accumulation = batch / micro / processes)", ge=1)
    warmup_ratio: float = setting(0.1, "fraction of the steps with linear warmup", ge=0, lt=1)
    min_lr_ratio: float = setting(0.1, "cosine decay ends at this fraction of the peak", ge=0, le=1)
    grad_clip: float = setting(1.0, "global gradient-norm clip; 0 disables (must be 0 in layer-wise mode)", ge=0,
                               finite=True)
    weight_decay: float = setting(0.0, "decoupled weight decay (AdamW)", ge=0, finite=True)
    on_nonfinite: str = setting("stop", "a NaN/Inf loss or gradient stops the run, or skips that step",
                                choices=("stop", "skip"))
    activation_checkpointing: bool = setting(False, "recompute each transformer block's activations in backward")
    parallel: str = setting(
        "ddp", "several processes (torchrun): ddp replicates the model on each, fsdp shards parameters, gradients and "
        "optimizer states over them (FSDP2, checkpoints in DCP folders); one process: neither",
        identity=False, choices=("ddp", "fsdp"))
    collective_timeout: int = setting(
        60, "several processes: seconds a training collective waits for every process before the run fails (a "
            "desync fails instead of hanging); waits for rank 0 alone (its evaluation, checkpoint, result, the weights "
            "it builds) allow 3 hours (gnlorp/distributed.py)", identity=False, ge=1)
    fsdp_mixed_precision: bool = setting(
        False, "parallel=fsdp on GPUs: bf16 parameters and compute, float32 gradient reduction and master weights")
    group_by_length: bool = setting(
        False, "GLUE: batches of similar lengths (transformers' get_length_grouped_indices, as Trainer's "
               "group_by_length): the same examples each epoch with about half the padding", identity=UNLESS_DEFAULT)
    eval_every: Optional[int] = setting(None, "steps between evaluations; null: every epoch (GLUE) / at the end (C4). "
                                              "GLUE reports the best evaluation, so the cadence is in its identity",
                                        identity=UNLESS_DEFAULT, ge=1)
    log_every: int = setting(10, "steps between W&B loss points", identity=False, ge=1)
    checkpoint_every: Optional[int] = setting(None, "steps between checkpoints; null: on interruption and at the end",
                                              identity=False, ge=1)
    stop_at_step: Optional[int] = setting(None, "stop cleanly (checkpoint + incomplete result) after this step",
                                          identity=False, ge=1)
    progress: bool = setting(True, "tqdm progress bar (else ten progress lines per run)", identity=False)
    num_threads: Optional[int] = setting(None, "torch CPU threads; null: torch's default", identity=False, ge=1)


@dataclass
class TaskSettings:
    family: str = setting("glue", "glue (fine-tuning) or c4 (pre-training)", choices=("glue", "c4"))
    name: str = setting("mrpc", "GLUE task name, or c4")
    data_dir: Optional[str] = setting(None, "local data folder; null: $GNLORP_GLUE_DIR / $GNLORP_C4_DIR, else the hub",
                                      identity=False)
    lr: Dict[str, float] = setting(help="peak learning rate per method (train.lr overrides)", factory=dict)
    alpha: Dict[str, float] = setting(
        help="GaLore's scale (alpha) per rank, with a 'default' entry; `scale=` overrides", factory=dict)
    # GLUE
    max_length: int = setting(128, "GLUE: tokens per example (truncated)", ge=1, family="glue")
    max_train_samples: Optional[int] = setting(None, "GLUE: a seeded subset of the train split (0: none)", ge=0,
                                               family="glue")
    max_eval_samples: Optional[int] = setting(None, "GLUE: the first rows of each evaluation split", ge=1,
                                              family="glue")
    selection_samples: int = setting(
        0, "GLUE: train rows held out (the same for every seed) and scored as 'selection', for choosing settings "
           "(0: none); max_train_samples subsets the rest", ge=0, family="glue")
    # C4
    seq_len: int = setting(256, "C4: tokens per packed block", ge=2, family="c4")
    streams: int = setting(8, "C4: logical data streams (divides train.batch_size; a multiple of the processes)",
                           ge=1, family="c4")
    shuffle_blocks: int = setting(1024, "C4: shuffle buffer per stream, in blocks (1: no shuffling)", ge=1,
                                  family="c4")
    cache_dir: Optional[str] = setting(None, "C4: where tokenized validation blocks are kept; null: ~/.cache/gnlorp",
                                       identity=False, family="c4")
    eval_tokens: int = setting(262144, "C4: validation budget in tokens (the first eval_tokens / seq_len blocks)",
                               ge=2, family="c4")
    selection_tokens: int = setting(
        0, "C4: tokens of a second validation slice, the blocks after the reported ones, scored as 'selection' "
           "for choosing settings (0: none)", ge=0, family="c4")


@dataclass
class ModelSettings:
    name: str = setting("minilm", "the model's name in run names and tables")
    kind: str = setting("encoder", "encoder (pretrained), encoder_config (random, from dims), llama (from dims)",
                        choices=("encoder", "encoder_config", "llama"))
    path: Optional[str] = setting(None, "hub id, local folder, or pip:<package> of a pretrained encoder")
    model_type: Optional[str] = setting(None, "encoder_config: the transformers model type (e.g. bert)")
    tokenizer: Optional[str] = setting(None, "tokenizer id (LLaMA: t5-base or mistral-sp; encoder_config: a path)")
    attn_implementation: Optional[str] = setting(None, "transformers attention implementation; null: its default")
    hidden_size: Optional[int] = setting(None, "width", ge=1)
    intermediate_size: Optional[int] = setting(None, "MLP width", ge=1)
    num_hidden_layers: Optional[int] = setting(None, "transformer blocks", ge=1)
    num_attention_heads: Optional[int] = setting(None, "attention heads", ge=1)
    vocab_size: Optional[int] = setting(None, "vocabulary size", ge=1)
    max_position_embeddings: Optional[int] = setting(None, "longest sequence", ge=1)
    hidden_dropout_prob: Optional[float] = setting(
        None, "encoder: dropout on hidden states; null: the model's own", identity=UNLESS_DEFAULT, ge=0, lt=1)
    attention_probs_dropout_prob: Optional[float] = setting(
        None, "encoder: dropout on attention weights; null: the model's own", identity=UNLESS_DEFAULT, ge=0, lt=1)


PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")


@dataclass
class MethodSettings:
    """The keys every method has. Each method declares its own subclass (gnlorp/methods/<name>.py), the schema
    of its gnlorp/conf/method/<name>.yaml, so a key another method owns is refused while composing. Rank and scale
    are run-level keys (`rank=`, `scale=`); the runner adds them, the learning rate and the precision to make
    a methods.MethodConfig."""

    name: str = setting("gradnormlorp", "the method (python -m gnlorp.schema lists them with their keys)")
    eps: float = setting(1e-6, "Adam epsilon", gt=0, finite=True)
    betas: List[float] = setting(help="Adam betas, each in [0, 1)", factory=lambda: [0.9, 0.999],
                                 each_ge=0, each_lt=1, length=2)
    target_modules: Optional[str] = setting(None, "regex over module names; null: every attention/MLP Linear",
                                            regex=True)
    layerwise: bool = setting(False, "step each weight inside backward (no gradient clipping, one process)")


@dataclass
class GaLoreFamily(MethodSettings):
    """Keys of the methods that project gradients (GaLore, GradNormLoRP)."""

    update_proj_gap: int = setting(200, "T, steps between projector refreshes (the papers' 200 for C4)", ge=1)
    proj_type: str = setting("std", "which side is projected (full: two-sided, the GradNormLoRP paper's Eq. 3)",
                             choices=PROJ_TYPES)
    svd: str = setting("auto", "exact, randomized, or auto (randomized where rank <= min(m,n)/8)",
                       choices=("exact", "randomized", "auto"))
    svd_signs: str = setting(
        "canonical", "singular vectors' signs: canonical (largest entry positive: the same projector on any number of "
                     "processes) or lapack (as LAPACK returns them: galore-torch's and transformers' trajectory)",
        identity=UNLESS_DEFAULT, choices=("canonical", "lapack"))
    exact_projection: bool = setting(
        False, "projected gradients that do not depend on FSDP's sharding (left: float64 sums, slow on most "
               "consumer GPUs; full: P^T (G Q^T)), so 8-bit runs on N processes match one process's")


@dataclass
class LoRAFamily(MethodSettings):
    """Keys of the methods that train low-rank factors B A beside a frozen W."""

    eps: float = setting(1e-8, "Adam epsilon (torch.optim.AdamW's default)", gt=0, finite=True)
    lora_alpha: float = setting(16.0, "scaling is lora_alpha / rank", gt=0, finite=True)
    lora_dropout: float = setting(0.0, "dropout on the factors' input", ge=0, lt=1)


@dataclass
class PrecisionSettings:
    name: str = setting("fp32", "fp32, bf16, 8bit, ao8bit or ao4bit")
    autocast: Optional[str] = setting(None, "autocast dtype; null: none", choices=(None, "bfloat16", "float16"))
    cuda_param_dtype: str = setting("float32", "parameter dtype on CUDA", choices=("float32", "bfloat16", "float16"))
    optim_bits: int = setting(32, "optimizer-state bits (4: torchao only)", choices=(4, 8, 32))
    optim_library: Optional[str] = setting(
        None, "who keeps the low-bit states; null: bitsandbytes (8-bit); torchao: torchao.optim's AdamW8bit/AdamW4bit "
        "(method=full)", identity=UNLESS_DEFAULT, choices=(None, "torchao"))


@dataclass
class LoggerSettings:
    mode: Optional[str] = setting(None, "W&B mode; null: online with an API key, else offline",
                                  identity=False, choices=(None, "online", "offline", "disabled"))
    project: str = setting("gnlorp", "W&B project", identity=False)
    entity: Optional[str] = setting(None, "W&B entity", identity=False)


@dataclass
class RunSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    task: TaskSettings = field(default_factory=TaskSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    precision: PrecisionSettings = field(default_factory=PrecisionSettings)
    logger: LoggerSettings = field(default_factory=LoggerSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    rank: int = setting(8, "rank of the low-rank methods (ignored by full training)", ge=1)
    scale: Optional[float] = setting(None, "GaLore's alpha; null: the task's value for this rank (task.alpha)",
                                     gt=0, finite=True)
    seed: int = setting(0, "seed of initialization, data order and subsets", ge=0, lt=SEED_LIMIT)
    name: Optional[str] = setting(None, "readable run name; null: <task>-<model>-<method>-r<rank>-<precision>-s<seed>",
                                  identity=False, regex_match=r"[A-Za-z0-9._=+-]+")
    results_dir: str = setting("results", "where results/<run>.json goes", identity=False)
    checkpoint_dir: str = setting("checkpoints", "where checkpoints/<run>/last.pt goes", identity=False)
    resume: bool = setting(False, "continue this config's interrupted run from its checkpoint", identity=False)
    keep_checkpoint: bool = setting(False, "keep the checkpoint after a complete run", identity=False)
    skip_complete: bool = setting(False, "do nothing if this config's result is already complete", identity=False)
    keep_going: bool = setting(False, "multirun: report a failed job and go on", identity=False)
    device: str = setting("auto", "auto (cuda if available), cpu or cuda; the kind it resolves to is in the identity",
                          identity=False,
                          choices=("auto", "cpu", "cuda"))
    save_model: bool = setting(False, "write the merged Hugging Face model to <results_dir>/models/<run>/",
                               identity=False)
    per_task: Dict[str, Any] = setting(help="per-task tables that experiments interpolate into other keys",
                                       identity=False, factory=dict)


def register() -> None:
    """Make the schema Hydra's base config (gnlorp/conf/config.yaml lists `_schema` first in its defaults), and each
    method's settings the schema of its gnlorp/conf/method/<name>.yaml (which lists `_<name>_schema` in its defaults)."""
    from hydra.core.config_store import ConfigStore

    from .methods import SPECS

    store = ConfigStore.instance()
    store.store(name="_schema", node=RunSettings)
    for spec in SPECS.values():
        store.store(group="method", name=f"_{spec.name}_schema", node=spec.settings)


def describe(schema=RunSettings, prefix: str = "") -> list[str]:
    """One line per setting: key, type, default, accepted values, help (`python -m gnlorp.schema`)."""
    import dataclasses

    lines = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if f.default_factory is not MISSING and dataclasses.is_dataclass(f.default_factory):
            lines += describe(f.default_factory, f"{key}.")
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        accepts = f.metadata.get("accepts", {})
        rules = [f"{sym} {accepts[k]}" for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                 if k in accepts]
        if "choices" in accepts:
            rules.append("one of " + ", ".join("null" if c is None else str(c) for c in accepts["choices"]))
        if accepts.get("regex"):
            rules.append("a regex")
        kind = str(f.type).replace("typing.", "")
        note = "" if f.metadata.get("identity", True) else "  [not part of the run identity]"
        rule = f" ({'; '.join(rules)})" if rules else ""
        lines.append(f"{key}: {kind} = {default!r}{rule}  {f.metadata.get('help', '')}{note}")
    return lines


if __name__ == "__main__":
    print("Every setting of `python run.py` (gnlorp/schema.py); set one with key=value:")
    print("\n".join(describe()))
    from .methods import SPECS

    for spec in SPECS.values():
        own = describe(spec.settings, "method.")
        print(f"\nmethod={spec.name} (gnlorp/methods/{spec.name}.py):")
        print("\n".join(own))
