"""Fira (Chen et al., arXiv 2410.01623; gnlorp/optim/fira.py): GaLore's projected Adam on each target weight, plus
the gradient outside the projection added back, scaled per channel by the ratio of the low-rank Adam update's norm to
the low-rank gradient's, under a norm-growth limiter (1.01x a step). Defaults from the reference's
pre_training_c4/scripts/llama_*.sh (xichen-fy/Fira): GaLore's rank, alpha (scale) and T."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import GaLoreFamily, setting
from .spec import Labels, MethodSpec

FSDP_REFUSAL = ("its scaling factors are norms over whole rows or columns of a weight and its correction needs the "
                "whole gradient, which FSDP's row shards split over the ranks (exact sharding is not implemented)")


@dataclass
class FiraSettings(GaLoreFamily):
    name: str = setting("fira", "Fira (Chen et al., arXiv 2410.01623)")
    proj_type: str = setting("std", "which side is projected (the reference's; 'full' has no per-channel scaling)",
                             choices=("std", "reverse_std", "left", "right"))


METHOD = MethodSpec("fira", FiraSettings, Labels(glue="Fira", c4="Fira", memory="Fira"),
                    order=90, low_rank=True, color="#9467bd", uses_scale=True, fsdp_refusal=FSDP_REFUSAL)


def prepare(model, cfg):
    from ..optim.targets import check_rank, target_linear_names

    check_rank(model, target_linear_names(model, cfg.target_modules, conv1d=True), cfg.rank)
    return model


def build_optimizer(model, cfg):
    """FiraAdamW: the target weights in Fira's group (GaLore's keys), the rest plain AdamW (build_adamw's groups)."""
    from ..optim.fira import FiraAdamW
    from .optimizers import named_and_layerwise
    from ..optim.param_groups import adamw_param_groups
    from ..optim.targets import target_linear_names

    low = [model.get_submodule(n).weight for n in target_linear_names(model, cfg.target_modules, conv1d=True)]
    groups = adamw_param_groups(model, low, weight_decay=cfg.weight_decay, rank=cfg.rank,
                                update_proj_gap=cfg.update_proj_gap, scale=cfg.scale, proj_type=cfg.proj_type,
                                svd=cfg.svd, exact_projection=cfg.exact_projection, svd_signs=cfg.svd_signs)
    opt = FiraAdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, optim_bits=cfg.optim_bits, svd=cfg.svd)
    return named_and_layerwise(opt, model, cfg)


def merge(model):
    return model


def state_bytes(model, cfg, element_bytes: int | None = None) -> int:
    """GaLore's (projector and projected moments per target, dense AdamW moments for the rest) plus the limiter's
    float32 norm per target."""
    from .galore import state_bytes as galore_bytes
    from ..state_bytes import target_weights

    return galore_bytes(model, cfg, element_bytes) + 4 * len(target_weights(model, cfg))
