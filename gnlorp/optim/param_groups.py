"""Param groups in galore-torch's convention for a whole model: the projected weights in one group with
GaLore's keys, every other trainable parameter in plain AdamW groups, no weight decay on 1-D tensors."""

from __future__ import annotations

from typing import Iterable

from torch import nn

from .targets import LIBRARY_KNOB, check_rank, target_linear_names


def no_decay(name: str, p) -> bool:
    """Biases and norm weights (1-D tensors) get no weight decay (GradNormLoRP's magnitudes do: gradnormlorp.py)."""
    return p.dim() < 2


def adamw_param_groups(
    model: nn.Module,
    low_rank: Iterable[nn.Parameter] = (),
    *,
    weight_decay: float = 0.0,
    rank: int | None = None,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    proj_type: str = "std",
    svd: str = "exact",
    exact_projection: bool = False,
    svd_signs: str = "canonical",
    decay_low_rank: bool = True,
    decay: Iterable[nn.Parameter] = (),
) -> list[dict]:
    """The model's trainable parameters as AdamW groups; those in `low_rank` form GaLore's projected group.

    Weight decay goes to every weight matrix (`no_decay`), to the `low_rank` ones unless decay_low_rank=False,
    and to the parameters listed in `decay` (GradNormLoRP's magnitudes, although 1-D)."""
    low_rank = list(low_rank)
    projected, decayed = {id(p) for p in low_rank}, {id(p) for p in decay}
    decaying, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in projected:
            (plain if no_decay(name, p) and id(p) not in decayed else decaying).append(p)
    groups = [{"params": decaying, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if low_rank:
        groups.append({
            "params": low_rank, "weight_decay": weight_decay if decay_low_rank else 0.0, "rank": int(rank),
            "update_proj_gap": int(update_proj_gap), "scale": float(scale), "proj_type": proj_type, "svd": svd,
            "exact_projection": bool(exact_projection), "svd_signs": svd_signs,
        })
    return [g for g in groups if g["params"]]


def galore_param_groups(
    model: nn.Module,
    rank: int,
    *,
    target_modules: str | None = None,
    weight_decay: float = 0.0,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    proj_type: str = "std",
    svd: str = "exact",
    exact_projection: bool = False,
    svd_signs: str = "canonical",
) -> list[dict]:
    """Groups for GaLoreAdamW: GaLore projects the weight of every nn.Linear (and GPT-2 Conv1D) inside the
    transformer blocks, on encoders (BERT/RoBERTa `encoder.layer.N.*`) and decoders (LLaMA `model.layers.N.*`,
    GPT-2/Falcon/BLOOM `transformer.h.N.*`) alike, or those whose name
    matches the regex `target_modules`; a selection that matches nothing, or a rank above a target's
    smallest dimension, is a UserError."""
    names = target_linear_names(model, target_modules, conv1d=True, knob=LIBRARY_KNOB)
    check_rank(model, names, rank)
    return adamw_param_groups(
        model, [model.get_submodule(n).weight for n in names], weight_decay=weight_decay, rank=rank,
        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type, svd=svd,
        exact_projection=exact_projection, svd_signs=svd_signs,
    )
