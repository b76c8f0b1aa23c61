"""Layer-wise updates: each parameter is stepped inside backward as soon as its gradient is complete,
and its gradient is freed at once, so the full set of gradients never exists at the same time
(GaLore §4.3; saves roughly one model's worth of gradient memory).

galore-torch's version steps on every backward, silently ignoring gradient accumulation (its issue #78).
Here each parameter counts its own backward passes and steps only on the last micro-batch of the step,
so k micro-batches give exactly the update of normal mode. A training loop calls `begin_step(n)` before
each step's n backward passes: a partial last batch has fewer micro-batches than `accumulation_steps`, and
counting to a fixed number would carry its gradient into the next step and shift every later step boundary.
Gradient clipping cannot be applied (the global norm is unknown when the first parameter is stepped).
"""

from __future__ import annotations

import torch

from .galore_adamw import GaLoreAdamW


class LayerwiseOptimizer:
    def __init__(self, optimizer: GaLoreAdamW, accumulation_steps: int = 1):
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self._backward_passes = accumulation_steps  # in the current step (begin_step)
        self._seen: dict[int, int] = {}
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook)
            for group in optimizer.param_groups
            for p in group["params"]
            if p.requires_grad
        ]

    def begin_step(self, micro_batches: int) -> None:
        """The next step has `micro_batches` backward passes; each parameter steps on the last of them."""
        if micro_batches < 1:
            raise ValueError(f"a step needs at least one micro-batch, got {micro_batches}")
        if any(self._seen.values()):
            raise RuntimeError("begin_step was called before the previous step's backward passes were all done")
        self._backward_passes = micro_batches

    def _hook(self, p: torch.Tensor) -> None:
        seen = self._seen.get(id(p), 0) + 1
        if seen == self._backward_passes:
            self.optimizer.step_param(p)
            # what torch's LR scheduler reads (its wrapper of .step() sets it) to warn that the schedule stepped
            # before the optimizer: a layer-wise step never goes through .step()
            self.optimizer._opt_called = True
            p.grad = None
            seen = 0
        self._seen[id(p)] = seen

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def step(self, closure=None):
        """Parameters were already stepped during backward; kept so a training loop needs no special case."""
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients are freed as each parameter steps; nothing is left to clear."""

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def base_optimizer(optimizer):
    """The torch Optimizer under a layer-wise wrapper (what an LR scheduler and a checkpoint need)."""
    return getattr(optimizer, "optimizer", optimizer)
