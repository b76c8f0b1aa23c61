"""GaLore: full-rank weights, AdamW moments on the rank-r projection of each target weight's gradient."""

from torch import nn

from .base import MethodConfig
from .optimizers import build_adamw
from .targets import check_rank, target_linear_names


def prepare(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    check_rank(model, target_linear_names(model, cfg.target_modules), cfg.rank)
    return model


def build_optimizer(model: nn.Module, cfg: MethodConfig):
    names = target_linear_names(model, cfg.target_modules)
    return build_adamw(model, cfg, low_rank=[model.get_submodule(n).weight for n in names])


def merge(model: nn.Module) -> nn.Module:
    return model
