"""ReLoRA (Lialin et al., 2023; gnlorp/optim/relora.py): LoRA merged into W and restarted every K steps, with
an optimizer reset and a jagged cosine lr; the optimizer is the shared AdamW (methods/optimizers.py).
Defaults from the reference code (Guitaricet/relora)."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import LoRAFamily, setting
from .spec import Labels, MethodSpec


@dataclass
class ReLoRASettings(LoRAFamily):
    name: str = setting("relora", "ReLoRA (Lialin et al., 2023)")
    lora_alpha: float = setting(32.0, "scaling is lora_alpha / rank (torchrun_main.py --lora_alpha)", gt=0,
                                finite=True)
    lora_dropout: float = setting(0.1, "dropout on the factors' input (the reference's ReLoRaModel)", ge=0, lt=1)
    relora_reset_every: int = setting(5000, "K: merge B A into W, re-initialize and reset the optimizer every K "
                                            "steps (the README's 250M run); must be >= the first warm-up", ge=1)
    relora_restart_warmup: int = setting(100, "lr re-warm-up steps after each reset (--restart_warmup_steps)", ge=0)
    relora_prune: float = setting(1.0, "fraction of the factors' moments zeroed at a reset, by magnitude (1: all, "
                                       "--reset_optimizer_on_relora; 0.9: magnitude pruning)", ge=0, le=1)


METHOD = MethodSpec("relora", ReLoRASettings, Labels(glue="ReLoRA", c4="ReLoRA", memory="ReLoRA"),
                    order=50, low_rank=True, color="#d62728")


def _check(cfg) -> None:
    from ..errors import UserError

    if int(cfg.relora_reset_every) <= 0:
        raise UserError(f"method.relora_reset_every={cfg.relora_reset_every} must be a positive number of steps.")
    if not 0 <= int(cfg.relora_restart_warmup) <= int(cfg.relora_reset_every):
        raise UserError(f"method.relora_restart_warmup={cfg.relora_restart_warmup} must be between 0 and "
                        f"relora_reset_every={cfg.relora_reset_every}.")
    if not 0.0 <= cfg.relora_prune <= 1.0:
        raise UserError(f"method.relora_prune={cfg.relora_prune} must be in [0, 1] (1: reset the moments).")
    if cfg.optim_bits == 8 and cfg.relora_prune < 1.0:
        raise UserError(f"method.relora_prune={cfg.relora_prune} needs 32-bit optimizer states (8-bit moments "
                        "cannot be pruned by magnitude in place); use relora_prune=1 or precision=bf16.")


def prepare(model, cfg):
    import torch

    from ..optim.relora import ReLoRALinear
    from .adapters import wrap_linears
    from ..optim.targets import check_rank, target_linear_names

    _check(cfg)
    names = target_linear_names(model, cfg.target_modules, method="ReLoRA")
    check_rank(model, names, cfg.rank)
    seed = int(torch.randint(0, 2**31 - 1, ()))

    def make(linear, i: int):
        return ReLoRALinear(linear, int(cfg.rank), cfg.lora_alpha, cfg.lora_dropout, seed=seed + i)

    return wrap_linears(model, names, make)


def build_optimizer(model, cfg):
    from .optimizers import build_adamw

    return build_adamw(model, cfg)


def merge(model):
    from ..optim.relora import ReLoRALinear
    from .adapters import unwrap_linears

    return unwrap_linears(model, ReLoRALinear)


def loop_hooks(model, optimizer, cfg, *, total_steps: int, warmup_ratio: float, min_lr_ratio: float, **_) -> dict:
    """after_step (and after_skipped_step): the merge-and-reset after every K-th optimizer step; lr_lambda: the
    jagged cosine."""
    from ..errors import UserError
    from ..optim.relora import jagged_cosine, prune_optimizer_state, relora_layers
    from ..optim.layerwise import base_optimizer

    _check(cfg)
    every, rewarm = int(cfg.relora_reset_every), int(cfg.relora_restart_warmup)
    warmup = int(warmup_ratio * total_steps)
    if warmup > every:
        raise UserError(f"method.relora_reset_every={every} is shorter than the first warm-up ({warmup} steps = "
                        f"train.warmup_ratio x steps); raise relora_reset_every or lower train.warmup_ratio.")
    layers = relora_layers(model)
    factors = [p for m in layers for p in (m.lora_A, m.lora_B)]

    def after_step(step: int) -> None:
        if step % every == 0 and step < total_steps:
            for m in layers:
                m.merge_and_reinit()
            prune_optimizer_state(base_optimizer(optimizer), factors, cfg.relora_prune)

    # a step skipped for a NaN/Inf (train.on_nonfinite=skip) still counts in the schedule, which restarts after
    # every K-th step: the merge comes with the restart (B A then holds the updates up to the step before)
    return {"after_step": after_step, "after_skipped_step": after_step,
            "lr_lambda": jagged_cosine(total_steps, warmup_ratio, min_lr_ratio, every, rewarm)}


def state_bytes(model, cfg, element_bytes: int | None = None) -> int:
    """AdamW moments over the dense trainable tensors and both factors of every target (in the weight's dtype),
    torch.optim.AdamW's float32 step per tensor in 32-bit."""
    from ..state_bytes import adam_bytes, size, target_weights
    from .adapters import trainable_dense

    targets = target_weights(model, cfg)
    r = int(cfg.rank)
    dense = [(p.numel(), size(p, element_bytes)) for _, p in trainable_dense(model, list(targets))]
    for w in targets.values():
        dense += [(r * w.shape[1], size(w, element_bytes)), (w.shape[0] * r, size(w, element_bytes))]
    return adam_bytes(dense, cfg.optim_bits, step_scalars=not cfg.layerwise)
