"""DoRA through peft (LoraConfig(use_dora=True)): LoRA plus a learned magnitude per row, GradNormLoRP's
nearest relative."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import LoRAFamily, setting
from . import lora
from .spec import Labels, MethodSpec


@dataclass
class DoRASettings(LoRAFamily):
    name: str = setting("dora", "DoRA through peft")


METHOD = MethodSpec("dora", DoRASettings, Labels(glue="DoRA", c4="DoRA", memory="DoRA"),
                    order=30, low_rank=True, color="#17becf", variant_of="lora")


def prepare(model, cfg):
    return lora.prepare(model, cfg, use_dora=True)


build_optimizer = lora.build_optimizer
merge = lora.merge


def state_bytes(model, cfg, element_bytes: int | None = None) -> int:
    return lora.state_bytes(model, cfg, element_bytes, magnitude=True)
