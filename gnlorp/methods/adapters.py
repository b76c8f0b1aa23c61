"""The LoRA-style layer swap shared by SwitchLoRA and ReLoRA: which parameters train besides the factors
(LoRA's convention, methods/lora.py: a causal LM trains everything but the target weights, i.e. embeddings,
norms and LM head; a classifier trains its head only) and the swap of target Linears for the method's
layer and back (merging into plain nn.Linear)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..optim.targets import classifier_head_names, is_causal_lm


def trainable_dense(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Parameter]]:
    """The (unprepared) model's parameters that train densely beside the factors of the `names` layers."""
    targets = tuple(f"{n}." for n in names)
    if is_causal_lm(model):
        return [(n, p) for n, p in model.named_parameters() if not n.startswith(targets)]
    head = tuple(f"{n}." for n in classifier_head_names(model))
    return [(n, p) for n, p in model.named_parameters() if n.startswith(head)]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def wrap_linears(model: nn.Module, names: list[str], make: Callable[[nn.Linear, int], nn.Module]) -> nn.Module:
    """Freeze all but the dense trainable parameters, then replace target i by make(linear, i)."""
    dense = {id(p) for _, p in trainable_dense(model, names)}
    for p in model.parameters():
        p.requires_grad_(id(p) in dense)
    for i, name in enumerate(names):
        _set(model, name, make(model.get_submodule(name), i))
    return model


@torch.no_grad()
def unwrap_linears(model: nn.Module, cls: type) -> nn.Module:
    """Replace every `cls` layer by an nn.Linear holding its merged weight W + B A * scaling."""
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]:
        w = m.merged_weight()
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=w.device, dtype=w.dtype)
        linear.weight.copy_(w)
        if m.bias is not None:
            linear.bias.copy_(m.bias)
        _set(model, name, linear)
    return model
