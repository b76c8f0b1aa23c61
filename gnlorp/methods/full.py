"""Full training: AdamW on every parameter (bitsandbytes AdamW8bit with 8-bit states)."""

from torch import nn

from .base import MethodConfig
from .optimizers import build_adamw


def prepare(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    return model


def build_optimizer(model: nn.Module, cfg: MethodConfig):
    return build_adamw(model, cfg)


def merge(model: nn.Module) -> nn.Module:
    return model
