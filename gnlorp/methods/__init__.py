"""The methods, registered in one place, each behind the same three functions:
prepare(model, cfg) -> model; build_optimizer(model, cfg) -> optimizer; merge(model) -> plain model.

Method modules (and peft with them) are imported only when a method is asked for, so that the runner can
check a config against these names without paying for those imports.
"""

from importlib import import_module
from types import ModuleType

from ..errors import UserError

# method name -> module in this package ("dora" is LoraConfig(use_dora=True): GradNormLoRP's nearest relative)
_MODULES = {"full": "full", "lora": "lora", "dora": "lora", "galore": "galore", "gradnormlorp": "gradnormlorp"}
METHODS = tuple(_MODULES)
LOW_RANK = ("lora", "dora", "galore", "gradnormlorp")
PROJECTED = ("galore", "gradnormlorp")  # GaLore's gradient projection: the methods that use its scale (alpha)

_LAZY = {
    "MethodConfig": ".base", "base_optimizer": ".optimizers", "check_rank": ".targets",
    "target_linear_names": ".targets",
}


def get_method(name: str) -> ModuleType:
    if name not in _MODULES:
        raise UserError(f"Unknown method {name!r}; choose one of: {', '.join(METHODS)}.")
    return import_module(f".{_MODULES[name]}", __name__)


def __getattr__(attr: str):
    if attr in _LAZY:
        return getattr(import_module(_LAZY[attr], __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["METHODS", "LOW_RANK", "PROJECTED", "get_method", *_LAZY]
