"""The methods, registered in one place, each behind the same three functions:
prepare(model, cfg) -> model; build_optimizer(model, cfg) -> optimizer; merge(model) -> plain model."""

from types import ModuleType

from ..errors import UserError
from . import full, galore, gradnormlorp, lora
from .base import MethodConfig
from .optimizers import base_optimizer
from .targets import check_rank, target_linear_names

METHODS: dict[str, ModuleType] = {
    "full": full,
    "lora": lora,
    "dora": lora,  # LoraConfig(use_dora=True): the nearest existing relative of GradNormLoRP
    "galore": galore,
    "gradnormlorp": gradnormlorp,
}
LOW_RANK = ("lora", "dora", "galore", "gradnormlorp")


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise UserError(f"Unknown method {name!r}; choose one of: {', '.join(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "LOW_RANK", "MethodConfig", "get_method", "base_optimizer", "check_rank", "target_linear_names"]
