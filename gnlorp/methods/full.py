"""Full training: AdamW on every parameter (bitsandbytes AdamW8bit with 8-bit states; torchao's AdamW8bit /
AdamW4bit with precision=ao8bit / ao4bit)."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import MethodSettings, setting
from .spec import Labels, MethodSpec


@dataclass
class FullSettings(MethodSettings):
    name: str = setting("full", "full training")
    eps: float = setting(1e-8, "Adam epsilon (torch.optim.AdamW's default)", gt=0, finite=True)


METHOD = MethodSpec("full", FullSettings, Labels(glue="Full fine-tuning", c4="Full-Rank", memory="AdamW",
                                                 eight_bit="8-bit Adam"),
                    order=0, low_rank=False, color="#4c4c4c")


def prepare(model, cfg):
    return model


def build_optimizer(model, cfg):
    from .optimizers import build_adamw

    return build_adamw(model, cfg)


def merge(model):
    return model


def state_bytes(model, cfg, element_bytes: int | None = None) -> int:
    """AdamW: two moments per parameter (torch.optim.AdamW adds a float32 step each; layer-wise mode is our
    GaLoreAdamW, which keeps none)."""
    from ..state_bytes import adam_bytes, dense_besides, torchao_adam_bytes

    if getattr(cfg, "optim_library", None) == "torchao":  # precision=ao8bit / ao4bit
        return torchao_adam_bytes(dense_besides(model, [], element_bytes), cfg.optim_bits)
    return adam_bytes(dense_besides(model, [], element_bytes), cfg.optim_bits, step_scalars=not cfg.layerwise)
