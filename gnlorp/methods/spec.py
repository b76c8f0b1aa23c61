"""What a method is (light: no torch), read by the registry in methods/__init__.py.

A method is a module gnlorp/methods/<name>.py. It defines `METHOD = MethodSpec(...)` (its facts: labels,
row order, low rank or not, its settings dataclass, a subclass of schema.MethodSettings, the schema of
gnlorp/conf/method/<name>.yaml) and the functions of the contract `Method` below: four required
(prepare, build_optimizer, merge, state_bytes) and two optional (loop_hooks, other_bytes), as peft's
BaseTuner declares what a tuner implements. The registry checks each module against it when it loads
(`check_method`): a missing required function, an optional one that is not callable, or one that cannot
take the arguments its callers pass is a MethodContractError naming the method and the function. Callers
find an optional function with `optional_hook(module, name)` (None where the method has none).

Heavy imports (torch, peft, bitsandbytes) live inside those functions, so the registry and every
declaration import in milliseconds (a config is checked before anything heavy loads).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Protocol, runtime_checkable


@dataclass(frozen=True)
class Labels:
    glue: str                       # GLUE table rows ("Full fine-tuning")
    c4: str                         # C4 table rows ("Full-Rank")
    memory: str                     # memory table rows ("AdamW")
    eight_bit: str | None = None    # the C4/memory label with 8-bit states, if not "8-bit <c4 label>"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    settings: type                  # its schema.MethodSettings subclass
    labels: Labels
    order: int                      # row order in every table (ascending)
    low_rank: bool                  # takes `rank` (and is named with it)
    color: str                      # plots
    variant_of: str | None = None   # a variant of another method (DoRA of LoRA): left out of the memory table
                                    # and of the benchmarks' default method list
    throughput_target: float | None = None  # end-to-end benchmark: amortized tokens/s at least this x full's
    uses_scale: bool = False        # uses GaLore's scale (alpha): part of its run identity
    fsdp_refusal: str | None = None  # why it cannot run on FSDP's shards (train.parallel=fsdp), if it cannot


# ----------------------------------------------------------------------------- the contract
@runtime_checkable
class Method(Protocol):
    """The required part of a method module, which satisfies it structurally (`isinstance(module, Method)`);
    `model` is a torch nn.Module, `cfg` a methods.base.MethodConfig, and the signatures are the calls its
    callers make (HOOKS: the arguments, checked by check_method)."""

    METHOD: MethodSpec

    def prepare(self, model, cfg):
        """The model made trainable for the method (wrapped layers, frozen weights); may modify `model`."""

    def build_optimizer(self, model, cfg):
        """The optimizer over the prepared model's trainable parameters."""

    def merge(self, model):
        """The prepared model turned back into a plain one (adapters folded into the weights), for saving."""

    def state_bytes(self, model, cfg, element_bytes: int | None = None) -> int:
        """Analytic optimizer-state bytes on the *unprepared* model (element_bytes: moment size, default the
        weights' dtype)."""


class OptionalHooks(Protocol):
    """What a method may also define (callers look them up with `optional_hook`)."""

    def loop_hooks(self, model, optimizer, cfg, *, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> dict:
        """Training-loop hooks: {"after_step": f(step) after each applied optimizer step, optionally
        "after_skipped_step": f(step) after a step skipped for a NaN/Inf, "lr_lambda": f(step) -> lr factor
        replacing the warmup-cosine schedule}."""

    def other_bytes(self, model, cfg, element_bytes: int | None = None) -> dict[str, int]:
        """{"device": bytes, "cpu": bytes} the method keeps outside the optimizer (e.g. candidate pools)."""


@dataclass(frozen=True)
class Hook:
    name: str
    required: bool
    args: tuple[str, ...]       # passed positionally by every caller
    kwargs: tuple[str, ...] = ()  # passed by keyword by some caller


HOOKS: tuple[Hook, ...] = (  # the calls the runner, the memory table and the benchmarks make
    Hook("prepare", True, ("model", "cfg")),
    Hook("build_optimizer", True, ("model", "cfg")),
    Hook("merge", True, ("model",)),
    Hook("state_bytes", True, ("model", "cfg", "element_bytes")),
    Hook("loop_hooks", False, ("model", "optimizer", "cfg"), ("total_steps", "warmup_ratio", "min_lr_ratio")),
    Hook("other_bytes", False, ("model", "cfg"), ("element_bytes",)),
)
REQUIRED = tuple(h.name for h in HOOKS if h.required)
OPTIONAL = tuple(h.name for h in HOOKS if not h.required)


class MethodContractError(TypeError):
    """A method module that does not satisfy `Method` (a programming error, raised when the registry loads)."""


def _accepts(fn: Callable, hook: Hook) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return True
    try:
        sig.bind(*hook.args, **{k: k for k in hook.kwargs})
    except TypeError:
        return False
    return True


def check_method(module: ModuleType, name: str | None = None) -> MethodSpec:
    """`module`'s MethodSpec, once the module satisfies the contract (else a MethodContractError naming the
    method and what is wrong). `name`: the name it is registered under (default: the module's last part)."""
    name = name or module.__name__.rpartition(".")[2]
    spec = getattr(module, "METHOD", None)
    if not isinstance(spec, MethodSpec):
        raise MethodContractError(f"method {name!r} ({module.__name__}) defines no METHOD = MethodSpec(...)")
    if spec.name != name:
        raise MethodContractError(f"method {name!r} ({module.__name__}) declares METHOD.name={spec.name!r}; a method "
                                  f"module is named after its method")
    for hook in HOOKS:
        fn = getattr(module, hook.name, None)
        if fn is None:
            if hook.required:
                raise MethodContractError(
                    f"method {name!r} ({module.__name__}) lacks the required function {hook.name}"
                    f"({', '.join(hook.args + hook.kwargs)}) (gnlorp/methods/spec.py: Method)")
            continue
        if not callable(fn):
            raise MethodContractError(f"method {name!r}: {hook.name} is not callable")
        if not _accepts(fn, hook):
            raise MethodContractError(
                f"method {name!r}: {hook.name}{inspect.signature(fn)} cannot be called as "
                f"{hook.name}({', '.join(hook.args + tuple(k + '=...' for k in hook.kwargs))})")
    return spec


def optional_hook(module: ModuleType, name: str) -> Callable[..., Any] | None:
    """The method's optional function `name` (one of OPTIONAL), or None where it has none."""
    if name not in OPTIONAL:
        raise ValueError(f"{name!r} is not an optional method hook; those are {OPTIONAL}")
    return getattr(module, name, None)
