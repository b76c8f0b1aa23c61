"""Parameter groups and the optimizer for every method, in one place, so all methods share the same
AdamW settings (lr, betas, eps, weight decay, 8-bit states) and differ only in what they project."""

from __future__ import annotations

import torch
from torch import nn

from ..optim import GaLoreAdamW, LayerwiseOptimizer
from .base import MethodConfig, no_decay


def build_adamw(model: nn.Module, cfg: MethodConfig, low_rank: list[nn.Parameter] = (), decay_low_rank: bool = True,
                decay: list[nn.Parameter] = ()):
    """AdamW over the trainable parameters; those in `low_rank` get GaLore's projection.

    Weight decay goes to every weight matrix (`no_decay`), to the `low_rank` ones unless decay_low_rank=False,
    and to the parameters listed in `decay` (GradNormLoRP's magnitudes, although 1-D).

    Plain AdamW (no projection, not layer-wise) is torch.optim.AdamW, or bitsandbytes' AdamW8bit with
    8-bit states: the baselines users know. Anything projected or layer-wise is our GaLoreAdamW.
    """
    projected, decayed = {id(p) for p in low_rank}, {id(p) for p in decay}
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in projected:
            (plain if no_decay(name, p) and id(p) not in decayed else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    if low_rank:
        groups.append({
            "params": list(low_rank), "weight_decay": cfg.weight_decay if decay_low_rank else 0.0, "rank": int(cfg.rank),
            "update_proj_gap": int(cfg.update_proj_gap), "scale": float(cfg.scale),
            "proj_type": cfg.proj_type, "svd": cfg.svd,
        })
    groups = [g for g in groups if g["params"]]
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)

    if not low_rank and not cfg.layerwise:
        if cfg.optim_bits == 8:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, **kw)
        return torch.optim.AdamW(groups, **kw)

    opt = GaLoreAdamW(groups, optim_bits=cfg.optim_bits, svd=cfg.svd, **kw)
    opt.set_param_names(model.named_parameters())
    if cfg.layerwise:
        return LayerwiseOptimizer(opt, accumulation_steps=cfg.accumulation_steps)
    return opt


def base_optimizer(optimizer):
    """The torch Optimizer under a layer-wise wrapper (what an LR scheduler and a checkpoint need)."""
    return getattr(optimizer, "optimizer", optimizer)
