"""Parameter groups and the optimizer for every method, in one place, so all methods share the same
AdamW settings (lr, betas, eps, weight decay, 8-bit states) and differ only in what they project."""

from __future__ import annotations

import torch
from torch import nn

from ..optim import GaLoreAdamW, LayerwiseOptimizer
from ..optim.param_groups import adamw_param_groups
from .base import MethodConfig


def build_adamw(model: nn.Module, cfg: MethodConfig, low_rank: list[nn.Parameter] = (), decay_low_rank: bool = True,
                decay: list[nn.Parameter] = ()):
    """AdamW over the trainable parameters; those in `low_rank` get GaLore's projection.

    Weight decay goes to every weight matrix (`no_decay`), to the `low_rank` ones unless decay_low_rank=False,
    and to the parameters listed in `decay` (GradNormLoRP's magnitudes, although 1-D).

    Plain AdamW (no projection, not layer-wise) is torch.optim.AdamW, or bitsandbytes' AdamW8bit with
    8-bit states, or torchao's AdamW8bit/AdamW4bit (cfg.optim_library="torchao", full training only): the
    baselines users know. Anything projected or layer-wise is our GaLoreAdamW.
    """
    projection = dict(rank=cfg.rank, update_proj_gap=cfg.update_proj_gap, scale=cfg.scale, proj_type=cfg.proj_type,
                      svd=cfg.svd, exact_projection=cfg.exact_projection,
                      svd_signs=getattr(cfg, "svd_signs", "canonical")) if low_rank else {}  # GaLore-family keys (schema.GaLoreFamily)
    groups = adamw_param_groups(model, low_rank, weight_decay=cfg.weight_decay, decay_low_rank=decay_low_rank,
                                decay=decay, **projection)
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)

    # bitsandbytes' AdamW8bit cannot step FSDP's DTensor shards: GaLoreAdamW's dense path runs the same 8-bit kernel
    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
    if getattr(cfg, "optim_library", None) == "torchao":  # precision=ao8bit/ao4bit: torchao's AdamW, full only
        if cfg.name != "full" or low_rank or cfg.layerwise or sharded:
            raise ValueError("torchao's low-bit AdamW is wired for plain AdamW on every parameter (method=full, "
                             "not layer-wise, not sharded)")
        from ..optim.lowbit import torchao_adamw

        return torchao_adamw(cfg.optim_bits)(groups, **kw)
    if not low_rank and not cfg.layerwise and not (sharded and cfg.optim_bits == 8):
        if cfg.optim_bits == 8:
            from ..optim.bnb import import_bitsandbytes

            return import_bitsandbytes().optim.AdamW8bit(groups, **kw)
        return torch.optim.AdamW(groups, **kw)

    return named_and_layerwise(GaLoreAdamW(groups, optim_bits=cfg.optim_bits, svd=getattr(cfg, "svd", "exact"), **kw),
                               model, cfg)


def named_and_layerwise(opt: GaLoreAdamW, model: nn.Module, cfg: MethodConfig):
    """A GaLore-family optimizer given the parameters' names (for its errors), wrapped layer-wise if asked."""
    opt.set_param_names(model.named_parameters())
    if cfg.layerwise:
        return LayerwiseOptimizer(opt, accumulation_steps=cfg.accumulation_steps)
    return opt
