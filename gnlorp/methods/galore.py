"""GaLore: full-rank weights, AdamW moments on the rank-r projection of each target weight's gradient."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import GaLoreFamily, setting
from .spec import Labels, MethodSpec


@dataclass
class GaLoreSettings(GaLoreFamily):
    name: str = setting("galore", "GaLore (Zhao et al. 2024)")


METHOD = MethodSpec("galore", GaLoreSettings, Labels(glue="GaLore", c4="GaLore", memory="GaLore"),
                    order=10, low_rank=True, color="#ff7f0e", uses_scale=True)


def prepare(model, cfg):
    from ..optim.targets import check_rank, target_linear_names

    check_rank(model, target_linear_names(model, cfg.target_modules, conv1d=True), cfg.rank)
    return model


def build_optimizer(model, cfg):
    from .optimizers import build_adamw
    from ..optim.targets import target_linear_names

    names = target_linear_names(model, cfg.target_modules, conv1d=True)
    return build_adamw(model, cfg, low_rank=[model.get_submodule(n).weight for n in names])


def merge(model):
    return model


def state_bytes(model, cfg, element_bytes: int | None = None, magnitudes: bool = False) -> int:
    """Per target W (m x n): the projector and the projected moments (METHOD.md); dense AdamW moments for the
    other parameters (our GaLoreAdamW: no step tensors); with `magnitudes` (GradNormLoRP) also Adam on one
    float32 magnitude per row."""
    from ..state_bytes import adam_bytes, added_size, dense_besides, projected_bytes, target_weights

    targets = target_weights(model, cfg)
    dense = dense_besides(model, list(targets.values()), element_bytes)
    extra, any8 = 0, False
    for w in targets.values():
        b, is8 = projected_bytes(w, cfg.rank, cfg.proj_type, cfg.optim_bits, element_bytes)
        extra, any8 = extra + b, any8 or is8
        if magnitudes:
            dense.append((w.shape[0], added_size(w, element_bytes)))
    return adam_bytes(dense, cfg.optim_bits, step_scalars=False, extra=extra, extra_8bit=any8)
