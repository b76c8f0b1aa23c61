"""GaLore (32/8-bit) and GradNormLoRP for `transformers.Trainer`, in one argument:

    from gnlorp.integrations.transformers import galore, gradnormlorp
    Trainer(model=model, args=args, train_dataset=ds, optimizer_cls_and_kwargs=galore(model, args, rank=8))
    Trainer(model=model, args=args, train_dataset=ds, optimizer_cls_and_kwargs=gradnormlorp(model, args, rank=8))

Each call returns the `(optimizer class, kwargs)` pair Trainer takes; Trainer consumes the kwargs, so call it
once per Trainer. lr, betas, eps and weight decay come from the TrainingArguments, as for transformers' own
`optim="galore_adamw"`; weight decay skips 1-D tensors (biases, norms, magnitudes). The targets are every
nn.Linear inside the transformer blocks, on encoders (BERT/RoBERTa `encoder.layer.N.*`) and decoders
(LLaMA `model.layers.N.*`, GPT-2/Falcon/BLOOM `transformer.h.N.*`) alike, or those matching the regex
`target_modules`; a selection of nothing is refused. GaLore also projects GPT-2's Conv1D weights; gradnormlorp
refuses them (it reparameterizes nn.Linear layers).

`gradnormlorp` reparameterizes the targets of `model` in place (W = diag(g) V / ||V||_row). From then on the
model's state_dict holds, under each target's vanilla `weight` key, the merged W, so every `checkpoint-N` and
`save_model()` is a vanilla checkpoint that plain `from_pretrained` loads; loading such a state dict into the
reparameterized model sets V = W, g = ||W||_row (the same function). The exact V and g, which a merged W
cannot hold (V's row norms are lost) and the trajectory depends on, are saved in the optimizer's state_dict
(`optimizer.pt`) and written back into the parameters when Trainer loads it, after the model weights: so
`resume_from_checkpoint` continues the uninterrupted run. The cost is one more copy of the target weights in
each checkpoint's optimizer.pt; with `save_only_model=True` there is no optimizer.pt, and a resume restarts
from the merged W with fresh Adam moments, as it does for any optimizer under Trainer.

Layer-wise mode is refused: it steps each weight inside backward, leaving no optimizer step for Trainer's
scheduler, gradient clipping, accumulation and checkpoints to act on.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..optim.galore_adamw import GaLoreAdamW
from ..optim.param_groups import adamw_param_groups, galore_param_groups
from ..optim.targets import LIBRARY_KNOB, check_rank, target_linear_names
from ..optim.weightnorm import WeightNormLinear, apply_weight_norm, row_norm

EXACT_PARAMS_KEY = "gnlorp_exact_params"


class TrainerGaLoreAdamW(GaLoreAdamW):
    """GaLoreAdamW as Trainer builds it from `(cls, kwargs)`: `param_names` names parameters in error
    messages; the values of `exact_params` (GradNormLoRP's V and g) are part of the state_dict and are
    written back into those parameters by load_state_dict."""

    def __init__(self, params, *, param_names=(), exact_params=(), **kwargs):
        super().__init__(params, **kwargs)
        if not any("rank" in group for group in self.param_groups):
            raise UserError(
                "TrainerGaLoreAdamW got no projected param group (Trainer consumes the kwargs it is given): call "
                "gnlorp.integrations.transformers.galore(...) or gradnormlorp(...) once per Trainer."
            )
        self.set_param_names(param_names)
        self.exact_params = list(exact_params)

    def _params(self) -> list[torch.Tensor]:
        # torch's state_dict numbers the parameters in this order
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.exact_params:
            index = {id(p): i for i, p in enumerate(self._params())}
            state[EXACT_PARAMS_KEY] = {index[id(p)]: p.detach() for p in self.exact_params}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if not self.exact_params:
            return
        if EXACT_PARAMS_KEY not in state_dict:
            raise ValueError(
                f"This optimizer state has no {EXACT_PARAMS_KEY!r} (GradNormLoRP's direction and magnitude): "
                "resume from a checkpoint written by gnlorp.integrations.transformers.gradnormlorp."
            )
        params = self._params()
        with torch.no_grad():
            for index, value in state_dict[EXACT_PARAMS_KEY].items():
                params[int(index)].copy_(value)


def _check_arguments(**values) -> None:
    """rank, update_proj_gap, scale, proj_type, svd and svd_signs against the values the runner's schema accepts for them
    (gnlorp/schema.py), when the optimizer is built rather than inside trainer.train(): an ArgumentError (a
    ValueError) naming the argument and what it accepts."""
    import dataclasses
    from numbers import Integral, Real

    from ..errors import ArgumentError
    from ..schema import GaLoreFamily, RunSettings  # light (dataclasses only): no omegaconf, no hydra

    fields = {f.name: f for f in (*dataclasses.fields(GaLoreFamily), *dataclasses.fields(RunSettings))}
    for name, value in values.items():
        accepts = fields[name].metadata.get("accepts", {})
        if "choices" in accepts:
            if value not in accepts["choices"]:
                raise ArgumentError(f"{name}={value!r} is not accepted; {name} accepts "
                                    f"{', '.join(map(repr, accepts['choices']))}.")
            continue
        integer = name in ("rank", "update_proj_gap")
        bounds = [(k, sym) for k, sym in (("ge", ">="), ("gt", ">")) if k in accepts]
        limits = " and ".join(f"{sym} {accepts[k]}" for k, sym in bounds)
        wanted = f"{'an integer' if integer else 'a finite number'} {limits}"
        if isinstance(value, bool) or not isinstance(value, Integral if integer else Real) \
                or not math.isfinite(value) or not all(value >= accepts[k] if k == "ge" else value > accepts[k]
                                                       for k, _ in bounds):
            raise ArgumentError(f"{name}={value!r} is not accepted; {name} must be {wanted}.")


def _check(optim_bits: int, layerwise: bool, **arguments) -> None:
    _check_arguments(**arguments)
    if layerwise:
        raise UserError(
            "layerwise=True cannot run under transformers.Trainer, which needs an optimizer step for its scheduler, "
            "gradient clipping, accumulation and checkpoints; use layerwise=False, or gnlorp's runner (method.layerwise=true)."
        )
    if optim_bits not in (8, 32):
        raise UserError(f"optim_bits={optim_bits!r} is not supported; use optim_bits=32 or optim_bits=8.")


def _optimizer_kwargs(model: nn.Module, args, groups: list[dict], optim_bits: int, **extra) -> dict[str, Any]:
    return dict(
        params=groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
        optim_bits=optim_bits, param_names=list(model.named_parameters()), **extra,
    )


def galore(
    model: nn.Module,
    args,
    rank: int,
    *,
    optim_bits: int = 32,
    target_modules: str | None = None,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    proj_type: str = "std",
    svd: str = "exact",
    svd_signs: str = "canonical",
    layerwise: bool = False,
) -> tuple[type, dict[str, Any]]:
    """`optimizer_cls_and_kwargs` for GaLore AdamW with `optim_bits` 32 or 8 (bitsandbytes blockwise moments)."""
    _check(optim_bits, layerwise, rank=rank, update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
           svd=svd, svd_signs=svd_signs)
    groups = galore_param_groups(
        model, rank, target_modules=target_modules, weight_decay=args.weight_decay,
        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type, svd=svd, svd_signs=svd_signs,
    )
    return TrainerGaLoreAdamW, _optimizer_kwargs(model, args, groups, optim_bits)


def _merged_state(module: WeightNormLinear, state_dict: dict, prefix: str, local_metadata) -> None:
    del state_dict[prefix + "direction"], state_dict[prefix + "magnitude"]
    state_dict[prefix + "weight"] = module.merged_weight()


def _load_merged(module, state_dict, prefix, *_):  # load_state_dict's pre-hook; its other arguments go unused
    weight = state_dict.pop(prefix + "weight", None)
    if weight is not None and prefix + "direction" not in state_dict:
        state_dict[prefix + "direction"] = weight
        state_dict[prefix + "magnitude"] = row_norm(weight)


def gradnormlorp(
    model: nn.Module,
    args,
    rank: int,
    *,
    optim_bits: int = 32,
    target_modules: str | None = None,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    proj_type: str = "std",
    svd: str = "exact",
    svd_signs: str = "canonical",
    layerwise: bool = False,
) -> tuple[type, dict[str, Any]]:
    """Reparameterize `model`'s targets in place (merge on save, module docstring) and return
    `optimizer_cls_and_kwargs`: GaLore's projected Adam on each direction V, dense Adam on its magnitude g."""
    _check(optim_bits, layerwise, rank=rank, update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
           svd=svd, svd_signs=svd_signs)  # before the model is reparameterized
    if any(isinstance(m, WeightNormLinear) for m in model.modules()):
        raise UserError(
            "gradnormlorp(model, ...) got a model that already holds WeightNormLinear layers; pass the model as "
            "loaded (e.g. from_pretrained), once."
        )
    names = target_linear_names(model, target_modules, knob=LIBRARY_KNOB, method="gradnormlorp(...)")
    check_rank(model, names, rank)
    wrapped = apply_weight_norm(model, names)
    for module in wrapped:
        module.register_state_dict_post_hook(_merged_state)
        module.register_load_state_dict_pre_hook(_load_merged)
    groups = adamw_param_groups(
        model, [m.direction for m in wrapped], weight_decay=args.weight_decay, rank=rank,
        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type, svd=svd, svd_signs=svd_signs,
    )
    exact = [p for m in wrapped for p in (m.direction, m.magnitude)]
    return TrainerGaLoreAdamW, _optimizer_kwargs(model, args, groups, optim_bits, exact_params=exact)
