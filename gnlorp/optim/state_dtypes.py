"""Optimizer state that keeps its own dtypes through a load."""

from __future__ import annotations

import torch


def keep_saved_state_dtypes(optimizer, state_dict: dict) -> None:
    """After Optimizer.load_state_dict: torch casts every floating state tensor to its parameter's dtype, which
    would turn uint8 moments into floats, block scales into bf16 and float32 step counts into bf16; put each
    tensor back in the dtype it was saved in."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, saved in state_dict["state"].items():
        state = optimizer.state[params[index]]
        for key, value in saved.items():
            if torch.is_tensor(value) and state[key].dtype != value.dtype:
                state[key] = value.to(device=params[index].device)
