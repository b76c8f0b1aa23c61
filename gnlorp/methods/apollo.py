"""APOLLO (Zhu et al., arXiv 2412.05270; gnlorp/optim/apollo.py): full-rank weights, Adam moments on a random
rank-r projection of each target weight's gradient, used only to scale the raw gradient per channel.
Defaults from the reference's scripts/pretrain_c4/llama_*_apollo.sh (zhuhanqing/APOLLO)."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import MethodSettings, setting
from .spec import Labels, MethodSpec

FSDP_REFUSAL = ("its scaling factors are norms over whole rows or columns of a weight and its projector spans a "
                "whole side, which FSDP's row shards split over the ranks (exact sharding is not implemented)")


@dataclass
class ApolloSettings(MethodSettings):
    name: str = setting("apollo", "APOLLO (Zhu et al., arXiv 2412.05270)")
    update_proj_gap: int = setting(200, "T, steps between projector draws (the paper's 200)", ge=1)
    proj: str = setting("random", "random: seeded Gaussian projector (the paper's); svd: GaLore's",
                        choices=("random", "svd"))
    scale_type: str = setting("channel", "scaling factor per channel (APOLLO) or per tensor (APOLLO-Mini)",
                              choices=("channel", "tensor"))
    apollo_scale: float = setting(1.0, "the reference's --apollo_scale: updates are multiplied by its square "
                                       "root (the paper's alpha)", gt=0, finite=True)
    scale_front: bool = setting(False, "apply sqrt(apollo_scale) before the norm-growth limiter, not after")
    norm_growth_limiter: bool = setting(True, "Fira's limiter: an update's norm grows at most 1.01x per step")


METHOD = MethodSpec("apollo", ApolloSettings, Labels(glue="APOLLO", c4="APOLLO", memory="APOLLO"),
                    order=70, low_rank=True, color="#e377c2", fsdp_refusal=FSDP_REFUSAL)


def prepare(model, cfg):
    from ..optim.targets import check_rank, target_linear_names

    check_rank(model, target_linear_names(model, cfg.target_modules), _rank(cfg))
    return model


def trained_rank(method: str, rank):
    """The rank a method trains at: APOLLO-Mini's is 1 by definition (it takes no rank=); the others', `rank`."""
    return 1 if method == "apollo_mini" else rank


def _rank(cfg) -> int:
    return trained_rank(cfg.name, cfg.rank)


def build_optimizer(model, cfg):
    """ApolloAdamW: the target weights in APOLLO's group, the rest plain AdamW (build_adamw's groups)."""
    from ..optim.apollo import ApolloAdamW
    from .optimizers import named_and_layerwise
    from ..optim.param_groups import adamw_param_groups
    from ..optim.targets import target_linear_names

    low = [model.get_submodule(n).weight for n in target_linear_names(model, cfg.target_modules)]
    groups = adamw_param_groups(model, low, weight_decay=cfg.weight_decay, rank=_rank(cfg),
                                update_proj_gap=cfg.update_proj_gap, scale=cfg.apollo_scale)
    groups[-1].update(proj=cfg.proj, scale_type=cfg.scale_type, scale_front=cfg.scale_front,
                      norm_growth_limiter=cfg.norm_growth_limiter)
    opt = ApolloAdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, optim_bits=cfg.optim_bits)
    return named_and_layerwise(opt, model, cfg)


def merge(model):
    return model


def state_bytes(model, cfg, element_bytes: int | None = None) -> int:
    """Per target W: GaLore's std projector and projected moments at the rank, plus the limiter's float32
    norm; dense AdamW moments for the other parameters (no step tensors)."""
    from ..state_bytes import adam_bytes, dense_besides, projected_bytes, target_weights

    targets = target_weights(model, cfg)
    dense = dense_besides(model, list(targets.values()), element_bytes)
    extra, any8 = 0, False
    for w in targets.values():
        b, is8 = projected_bytes(w, _rank(cfg), "std", cfg.optim_bits, element_bytes)
        extra, any8 = extra + b + (4 if cfg.norm_growth_limiter else 0), any8 or is8
    return adam_bytes(dense, cfg.optim_bits, step_scalars=False, extra=extra, extra_8bit=any8)
