"""Fira (Chen et al., arXiv 2410.01623): full-rank training under GaLore's low-rank optimizer-state constraint.

Each projected weight W (m x n) keeps Adam moments only on GaLore's rank-r projection R of its gradient G (an
SVD refreshed every `update_proj_gap` steps), as GaLore does; the gradient GaLore discards is added back,
scaled by how much Adam rescales the low-rank gradient (norm-based scaling):
  psi = m / (sqrt(v) + eps)                              GaLore's low-rank Adam direction
  phi = ||psi_i|| / (||R_i|| + 1e-8)                     per row of W (right projector, m >= n under std) or
                                                         per column (left projector)
  S   = phi * (G - scale back(R))                        the correction (back = P R or R Q)
  S  <- S / max(||S|| / ||S_prev||, 1.01) * 1.01         the norm-growth limiter: ||S|| grows at most 1.01x a step
  W  <- W - step_size (scale back(psi) + S), then the galore-form decoupled decay.
`scale` is GaLore's alpha and, as in the reference, also weighs the subtracted back(R) (so with scale < 1 the
correction keeps (1 - scale) of the in-subspace gradient: the code the paper's runs used, kept as is).

Param groups follow fira's FiraAdamW (fira==1.0.2 on PyPI, the test oracle): a group with a `rank` key is
Fira's (`update_proj_gap`, `scale` = the reference's `alpha`, `proj_type` std | reverse_std | left | right, and
GaLoreAdamW's `svd`, `svd_signs`); a group without one is plain AdamW (GaLoreAdamW's). With svd_signs="lapack"
and svd="exact" the projector is galore-torch's and the reference's, and in float32 the trajectory equals the
reference's to the last bit on CPU (tests/unit/test_fira_optim.py).

What differs from fira 1.0.2, each keeping the paper's behaviour:
  - the projector is not a Python object in the state but plain tensors (proj_left / proj_right), and the
    limiter's last norm `scaling_grad` a float32 0-d tensor, so state_dict() round-trips, loads with
    torch.load(weights_only=True) and resumes bit for bit;
  - the limiter's max(ratio, 1.01) is a clamp on the device (the reference's Python max() syncs the GPU);
  - the scaling factor's axis follows the projector's side; the reference picks it from the shape of R, which
    is the same but where R is square (rank = the other dimension): there it takes rows even for a left
    projector and fails to broadcast. proj_type "full" (an r x r R: no per-row or per-column factor that fits
    W) is refused; the reference fails on it;
  - 8-bit moments are accepted (bitsandbytes' bias-corrected direction, divided back by the correction so
    that phi, the limiter and the step size are the 32-bit path's).
"""

from __future__ import annotations

import torch

from .adam_math import bias_corrected_step_size, decay_after_update
from .apollo import limit_norm_growth, scaling_factor  # phi and the limiter, as APOLLO's
from .galore_adamw import GaLoreAdamW
from .projector import project, project_back, projection_side
from .sharded import is_sharded

PROJ_TYPES = ("std", "reverse_std", "left", "right")  # the reference's, but "full" (see the module docstring)


class FiraAdamW(GaLoreAdamW):
    """Fira's AdamW (module docstring); GaLoreAdamW's for groups without `rank` and for everything else."""

    @staticmethod
    def _check_group(group: dict) -> None:
        if "rank" in group:
            group.setdefault("proj_type", "std")
            if group["proj_type"] not in PROJ_TYPES:
                raise ValueError(f"Fira's proj_type must be one of {PROJ_TYPES}, got {group['proj_type']!r} (with "
                                 "'full' the low-rank gradient is r x r: no per-row or per-column scaling fits W)")
        GaLoreAdamW._check_group(group)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        if "rank" not in group:
            return super()._update(p, group)
        if is_sharded(p):
            raise RuntimeError("FiraAdamW cannot step FSDP shards: its scaling factors are norms over whole rows or "
                               "columns of a weight and its correction needs the whole gradient (use train.parallel=ddp).")
        state = self.state[p]
        state.setdefault("step", 0)
        grad = p.grad
        side = projection_side(p.shape, group["proj_type"])
        if self._refresh_due(state, group):
            self._set_projection(state, p, grad, group, side)
        P, Q = state.get("proj_left"), state.get("proj_right")
        low = project(grad, side, P, Q, exact=bool(group["exact_projection"]))
        if "exp_avg" not in state:
            self._init_moments(state, low)
        state["step"] += 1
        t, lr, scale = state["step"], group["lr"], group["scale"]
        if state["exp_avg"].dtype == torch.uint8:
            # bitsandbytes' step with lr 1 into a zero buffer: minus the direction times the bias correction
            target = torch.zeros_like(low)
            self._adam_8bit(low.contiguous(), target, state, group, t=t, lr=1.0)
            direction = target.div_(-bias_corrected_step_size(1.0, group["betas"], t))
            step_size = bias_corrected_step_size(lr, group["betas"], t, group.get("correct_bias", True))
        else:
            direction, step_size = self._adam_float(low, state, group, t)
        # the reference's operations in its order: back(R) scaled, the residual, phi, then the limiter
        residual = grad - project_back(low, side, P, Q) * scale
        correction_term = residual * scaling_factor(direction, low, side, "channel")  # phi, per row or column of W
        correction_term = limit_norm_growth(correction_term, state, "scaling_grad")
        update = project_back(direction.to(p.dtype), side, P, Q) * scale + correction_term
        p.add_(update.to(p.dtype), alpha=-step_size)
        decay_after_update(p, lr, group["weight_decay"])
