"""The methods, registered in one place: one module per method in this package, listed below. Each declares
its facts (`METHOD`, a spec.MethodSpec: labels, row order, low rank or not, its settings dataclass) and its
functions (spec.Method: the contract, checked as each module loads). Everything else (config schema, checks, runner, memory table, tables,
benchmarks) reads them from here.

Importing this package and the declarations is light (no torch, no peft): the heavy parts of a method load
when its functions run.
"""

from importlib import import_module
from types import ModuleType

from ..errors import UserError
from .spec import Method, MethodContractError, MethodSpec, check_method, optional_hook

_MODULES = (  # one line per method; each module is named after its method
    "full",
    "galore",
    "lora",
    "dora",
    "gradnormlorp",
    "relora",
    "switchlora",
    "apollo",
    "apollo_mini",
    "fira",
)

BASELINE = "full"  # what memory savings and speed ratios are measured against


def _load(names: tuple[str, ...] = _MODULES) -> dict[str, MethodSpec]:
    """The specs of the method modules `names`, each checked against the contract (spec.check_method)."""
    specs = [check_method(import_module(f".{m}", __name__), m) for m in names]
    return {s.name: s for s in sorted(specs, key=lambda s: s.order)}


SPECS: dict[str, MethodSpec] = _load()
METHODS = tuple(SPECS)  # in table row order
LOW_RANK = tuple(n for n, s in SPECS.items() if s.low_rank)
PROJECTED = tuple(n for n, s in SPECS.items() if s.uses_scale)  # GaLore's projection: the methods using its scale

_LAZY = {
    "MethodConfig": ".base", "base_optimizer": "..optim.layerwise", "check_rank": "..optim.targets",
    "target_linear_names": "..optim.targets",
}


def get_method(name: str) -> ModuleType:
    if name not in SPECS:
        raise UserError(f"Unknown method {name!r}; choose one of: {', '.join(METHODS)}.")
    return import_module(f".{name}", __name__)


def spec(name: str) -> MethodSpec:
    if name not in SPECS:
        raise UserError(f"Unknown method {name!r}; choose one of: {', '.join(METHODS)}.")
    return SPECS[name]


def label(name: str, table: str) -> str:
    """The method's row label in a table ("glue", "c4", "memory"); an unregistered name stands for itself."""
    return getattr(SPECS[name].labels, table) if name in SPECS else name


def is_low_rank(name: str) -> bool:
    return name in SPECS and SPECS[name].low_rank


def estimate_state_bytes(model, cfg, element_bytes: int | None = None) -> int:
    """Analytic optimizer-state bytes of `cfg.name` (a MethodConfig) on `model` *before* the method prepares it
    (each method's state_bytes, from the building blocks in gnlorp/state_bytes.py).

    element_bytes: the size of one moment / projector element (default: the parameters' own dtype),
    e.g. 2 for BF16 states in the memory table."""
    return get_method(cfg.name).state_bytes(model, cfg, element_bytes)


def __getattr__(attr: str):
    if attr in _LAZY:
        return getattr(import_module(_LAZY[attr], __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["BASELINE", "METHODS", "LOW_RANK", "PROJECTED", "SPECS", "Method", "MethodContractError", "MethodSpec",
           "check_method", "optional_hook", "get_method", "spec", "label", "is_low_rank",
           "estimate_state_bytes", *_LAZY]
