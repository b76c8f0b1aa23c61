"""What a method declares about itself (light: no torch), read by the registry in methods/__init__.py.

Each method module defines `METHOD = MethodSpec(...)` next to its settings dataclass (a subclass of
schema.MethodSettings, the schema of gnlorp/conf/method/<name>.yaml) and its functions:

    prepare(model, cfg) -> model; build_optimizer(model, cfg) -> optimizer; merge(model) -> plain model;
    state_bytes(model, cfg, element_bytes=None) -> analytic optimizer-state bytes (on the unprepared model);
    optional loop_hooks(model, optimizer, cfg, total_steps, warmup_ratio, min_lr_ratio) -> {"after_step": f(step),
        "lr_lambda": f(step) -> lr factor, optionally "after_skipped_step": f(step)}  (after_step runs after each
        applied optimizer step, after_skipped_step after a step skipped for a NaN/Inf; lr_lambda replaces the
        warmup-cosine schedule);
    optional other_bytes(model, cfg, element_bytes=None) -> {"device": bytes, "cpu": bytes} the method keeps
        outside the optimizer (e.g. candidate pools).

Heavy imports (torch, peft, bitsandbytes) live inside those functions, so the registry and every
declaration import in milliseconds (a config is checked before anything heavy loads).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Labels:
    glue: str                       # GLUE table rows ("Full fine-tuning")
    c4: str                         # C4 table rows ("Full-Rank")
    memory: str                     # memory table rows ("AdamW")
    eight_bit: str | None = None    # the C4/memory label with 8-bit states, if not "8-bit <c4 label>"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    settings: type                  # its schema.MethodSettings subclass
    labels: Labels
    order: int                      # row order in every table (ascending)
    low_rank: bool                  # takes `rank` (and is named with it)
    color: str                      # plots
    variant_of: str | None = None   # a variant of another method (DoRA of LoRA): left out of the memory table
                                    # and of the benchmarks' default method list
    throughput_target: float | None = None  # end-to-end benchmark: amortized tokens/s at least this x full's
    uses_scale: bool = False        # uses GaLore's scale (alpha): part of its run identity
    fsdp_refusal: str | None = None  # why it cannot run on FSDP's shards (train.parallel=fsdp), if it cannot
