"""GradNormLoRP (METHOD.md): each target Linear is reparameterized as W = diag(g) V / ||V||_row; the
direction V is trained with GaLore's projected Adam on its weight-normalized gradient, the magnitude g
with dense Adam; merging writes plain nn.Linear weights back.

Weight decay (METHOD.md): W = diag(g) V / ||V||_row does not change when V is scaled, so decaying V would
do nothing to the model (it only shrinks ||V|| and so enlarges the direction's effective step). Decoupled
decay acts on the magnitude instead: g <- (1 - lr wd) g scales W by exactly (1 - lr wd), the decay AdamW
applies to a dense W. V is never decayed."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import GaLoreFamily, setting
from . import galore
from .spec import Labels, MethodSpec


@dataclass
class GradNormLoRPSettings(GaLoreFamily):
    name: str = setting("gradnormlorp", "GradNormLoRP (METHOD.md)")


METHOD = MethodSpec("gradnormlorp", GradNormLoRPSettings,
                    Labels(glue="GradNormLoRP", c4="GradNormLoRP", memory="GradNormLoRP"),
                    order=40, low_rank=True, color="#2ca02c", throughput_target=0.85, uses_scale=True)


def prepare(model, cfg):
    from ..optim import apply_weight_norm
    from ..optim.targets import check_rank, target_linear_names

    names = target_linear_names(model, cfg.target_modules, method="GradNormLoRP")
    check_rank(model, names, cfg.rank)
    apply_weight_norm(model, names)
    return model


def build_optimizer(model, cfg):
    from ..optim import WeightNormLinear
    from .optimizers import build_adamw

    layers = [m for m in model.modules() if isinstance(m, WeightNormLinear)]
    return build_adamw(model, cfg, low_rank=[m.direction for m in layers], decay_low_rank=False,
                       decay=[m.magnitude for m in layers])


def merge(model):
    from ..optim import merge_weight_norm

    return merge_weight_norm(model)


def state_bytes(model, cfg, element_bytes: int | None = None) -> int:
    """GaLore's, plus Adam on the magnitude g (m float32 values per target)."""
    return galore.state_bytes(model, cfg, element_bytes, magnitudes=True)
