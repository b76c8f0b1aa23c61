"""GradNormLoRP (METHOD.md): each target Linear is reparameterized as W = diag(g) V / ||V||_row; the
direction V is trained with GaLore's projected Adam on its weight-normalized gradient, the magnitude g
with dense Adam; merging writes plain nn.Linear weights back.

Weight decay (METHOD.md): W = diag(g) V / ||V||_row does not change when V is scaled, so decaying V would
do nothing to the model (it only shrinks ||V|| and so enlarges the direction's effective step). Decoupled
decay acts on the magnitude instead: g <- (1 - lr wd) g scales W by exactly (1 - lr wd), the decay AdamW
applies to a dense W. V is never decayed."""

from torch import nn

from ..optim import WeightNormLinear, apply_weight_norm, merge_weight_norm
from .base import MethodConfig
from .optimizers import build_adamw
from .targets import check_rank, target_linear_names


def prepare(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    names = target_linear_names(model, cfg.target_modules)
    check_rank(model, names, cfg.rank)
    apply_weight_norm(model, names)
    return model


def build_optimizer(model: nn.Module, cfg: MethodConfig):
    layers = [m for m in model.modules() if isinstance(m, WeightNormLinear)]
    return build_adamw(model, cfg, low_rank=[m.direction for m in layers], decay_low_rank=False,
                       decay=[m.magnitude for m in layers])


def merge(model: nn.Module) -> nn.Module:
    return merge_weight_norm(model)
