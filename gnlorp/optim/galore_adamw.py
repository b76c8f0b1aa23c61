"""AdamW with GaLore's low-rank gradient projection, in 32-bit or 8-bit blockwise moments.

Param groups follow galore-torch: a group with a `rank` key is projected (`update_proj_gap`, `scale`,
`proj_type`, and our `svd` = exact | randomized); a group without one is plain AdamW. In 32-bit the
trajectory equals `galore_torch.GaLoreAdamW` for the same inputs (the test oracle) up to float rounding:
the projected-back update is added (and the weight decayed) by one GEMM into the weight (`addmm_`) where
galore-torch materializes P R, scales it and adds it, so the last bits differ (4e-7 after the oracle's 30
steps with weight decay, 7e-8 without; the test allows 1e-5). With svd_signs="lapack" a projected weight takes
galore-torch's own operations and its column-major projector, so that no last-bit difference flips a singular
vector's sign at a later refresh: on CPU the trajectory is galore-torch's (and transformers' galore_adamw's) bit for
bit (tests/e2e/test_galore_parity.py).

Per parameter the state holds only plain tensors and ints:
  step                      int, optimizer steps taken
  exp_avg, exp_avg_sq       Adam moments on the projected gradient R (float, or uint8 in 8-bit)
  absmax1, absmax2          8-bit only: float32 scale of each 256-element block
  proj_left, proj_right     the projector (P: m x r, Q: r x n); one of them, or both for proj_type=full

Unlike galore-torch's GaLoreAdamW8bit, the 8-bit path passes every bitsandbytes argument by keyword
(galore-torch's positional call lands on `max_unorm=100, skip_zeros=True` with bitsandbytes >= 0.50 and
shrinks small-tensor updates ~200x) and never calls CUDA on a CPU.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import torch
from torch.optim import Optimizer

from .adam_math import (
    BLOCKSIZE,
    adam_8bit_step,
    adam_float_foreach_step,
    adam_float_step,
    bnb_functional,
    decay_after_update,
    decay_factor,
)
from .sharded import is_sharded, sharded_update
from .bnb import adam_qmaps
from .projector import (
    PROJ_TYPES, SIGNS, SVD_METHODS, add_projected_back, compute_projection, project, project_back, projection_side,
)
from .state_dtypes import keep_saved_state_dtypes

class LowRankUpdate(NamedTuple):
    """p <- decay p + coef back(direction)."""

    direction: torch.Tensor
    coef: float
    decay: float


class GaLoreAdamW(Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        correct_bias: bool = True,
        svd: str = "exact",
        optim_bits: int = 32,
        min_8bit_size: int = 4096,
    ):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas: {betas}")
        if optim_bits not in (8, 32):
            raise ValueError(f"optim_bits must be 8 or 32, got {optim_bits}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias, svd=svd)
        super().__init__(params, defaults)
        self.optim_bits = optim_bits
        self.min_8bit_size = min_8bit_size
        self.param_names: dict[int, str] = {}
        self._qmaps: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        for group in self.param_groups:
            self._check_group(group)
        if optim_bits == 8:
            bnb_functional()

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "optim_bits"):
            self._check_group(self.param_groups[-1])

    @staticmethod
    def _check_group(group: dict) -> None:
        if group.get("svd", "exact") not in SVD_METHODS:
            raise ValueError(f"svd must be one of {SVD_METHODS}, got {group['svd']!r}")
        if group.get("svd_signs", "canonical") not in SIGNS:
            raise ValueError(f"svd_signs must be one of {SIGNS}, got {group['svd_signs']!r}")
        if "rank" not in group:
            return
        if not group["params"]:
            raise ValueError(
                f"A projected param group (rank={group['rank']}) has no parameters: training would be plain AdamW; "
                "select the target weights, e.g. with gnlorp.optim.galore_param_groups(model, rank=...)."
            )
        group.setdefault("update_proj_gap", 200)
        group.setdefault("scale", 1.0)
        group.setdefault("proj_type", "std")
        group.setdefault("exact_projection", False)
        if group["proj_type"] not in PROJ_TYPES:
            raise ValueError(f"proj_type must be one of {PROJ_TYPES}, got {group['proj_type']!r}")
        if int(group["rank"]) <= 0 or int(group["update_proj_gap"]) <= 0:
            raise ValueError(f"rank and update_proj_gap must be positive, got {group['rank']}, {group['update_proj_gap']}")
        for p in group["params"]:
            if p.dim() != 2:
                raise ValueError(f"GaLore projects 2-D weights only; got a parameter of shape {tuple(p.shape)}")

    def set_param_names(self, named_parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Names used in error messages (e.g. a NaN gradient)."""
        self.param_names.update({id(p): n for n, p in named_parameters})

    # ---------------------------------------------------------------- stepping
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if "rank" in group:
                for p in params:
                    self._update(p, group)
            else:
                self._dense_step(params, group)
        return loss

    @torch.no_grad()
    def step_param(self, p: torch.Tensor) -> None:
        """Step one parameter (layer-wise mode calls this from a gradient hook)."""
        group = self._group_of(p)
        if p.grad is not None:
            self._update(p, group)

    def _group_of(self, p):
        index = getattr(self, "_group_index", None)
        if index is None or id(p) not in index:
            self._group_index = index = {id(q): g for g in self.param_groups for q in g["params"]}
        return index[id(p)]

    def _adam_8bit(self, grad: torch.Tensor, target: torch.Tensor, state: dict, group: dict, *, t: int, lr: float) -> None:
        """bitsandbytes' blockwise 8-bit Adam: target <- target - lr * direction, moments updated in place."""
        adam_8bit_step(grad, target, state["exp_avg"], state["exp_avg_sq"], absmax1=state["absmax1"],
                       absmax2=state["absmax2"], qmaps=adam_qmaps(grad.device, self._qmaps), t=t, lr=lr,
                       betas=group["betas"], eps=group["eps"])

    @staticmethod
    def _adam_float(grad: torch.Tensor, state: dict, group: dict, t: int) -> tuple[torch.Tensor, float]:
        """Adam with float moments: updates them and returns (direction m / (sqrt(v) + eps), step size)."""
        return adam_float_step(grad, state["exp_avg"], state["exp_avg_sq"], t=t, lr=group["lr"], betas=group["betas"],
                               eps=group["eps"], correct_bias=group.get("correct_bias", True))

    def _init_moments(self, state: dict, low: torch.Tensor, numel: int | None = None) -> None:
        """Moments shaped like `low`; `numel` (default low's) decides 8-bit vs float, so a shard of a
        low-rank gradient gets the storage the whole one would get on one process."""
        numel = low.numel() if numel is None else numel
        if self.optim_bits == 8 and numel >= self.min_8bit_size:
            blocks = math.ceil(low.numel() / BLOCKSIZE)
            state["exp_avg"] = torch.zeros_like(low, dtype=torch.uint8, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(low, dtype=torch.uint8, memory_format=torch.contiguous_format)
            state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=low.device)
            state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=low.device)
        else:
            # under min_8bit_size 8-bit mode keeps float32 moments whatever the parameter's dtype, as
            # bitsandbytes' own optimizers do (and state_bytes.py counts); 32-bit mode keeps the parameter's dtype
            dtype = torch.promote_types(low.dtype, torch.float32) if self.optim_bits == 8 else low.dtype
            state["exp_avg"] = torch.zeros_like(low, dtype=dtype, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(low, dtype=dtype, memory_format=torch.contiguous_format)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        if is_sharded(p):
            return sharded_update(self, p, group)
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
        grad = p.grad
        galore = "rank" in group

        if galore:
            side = projection_side(p.shape, group["proj_type"])
            if self._refresh_due(state, group):
                self._set_projection(state, p, grad, group, side)
            P, Q = state.get("proj_left"), state.get("proj_right")
            low = project(grad, side, P, Q, exact=bool(group["exact_projection"]))
        else:
            low = grad

        if "exp_avg" not in state:
            self._init_moments(state, low)
        if galore and group.get("svd_signs", "canonical") == "lapack" and state["exp_avg"].dtype != torch.uint8:
            self._galore_torch_update(p, low, state, group, side=side, P=P, Q=Q)
            return
        if galore:
            # One GEMM writes P R (or R Q) straight into p, scaled and decayed: no m x n temporary.
            direction, coef, decay = self._low_rank_direction(state, low, group)
            add_projected_back(p, direction.to(p.dtype), side, P, Q, alpha=coef, beta=decay)
            return
        self._dense_adam(p, grad, state, group)

    @staticmethod
    def _refresh_due(state: dict, group: dict) -> bool:
        return state["step"] % group["update_proj_gap"] == 0 or not ("proj_left" in state or "proj_right" in state)

    def _set_projection(self, state: dict, p: torch.Tensor, full_grad: torch.Tensor, group: dict, side: str) -> None:
        name = self.param_names.get(id(p), f"a parameter of shape {tuple(p.shape)}")
        P, Q = compute_projection(
            full_grad, int(group["rank"]), side, group.get("svd", "exact"), name, seed=state["step"] + p.numel(),
            signs=group.get("svd_signs", "canonical"),
        )
        if P is not None:
            state["proj_left"] = P
        if Q is not None:
            state["proj_right"] = Q

    def _low_rank_direction(self, state: dict, low: torch.Tensor, group: dict) -> LowRankUpdate:
        """Adam on a (part of a) projected gradient `low`: advances the moments and the step count and
        returns the (direction, coef, decay) such that the update is p <- decay p + coef back(direction).
        Element-wise (8-bit: per 256-element block), so any block-aligned slice of `low` gives that slice
        of the whole direction."""
        lr, wd = group["lr"], group["weight_decay"]
        state["step"] += 1
        t = state["step"]
        # Decoupled weight decay after the update, as galore-torch does: p <- (1 - lr wd) (p - update).
        decay = decay_factor(lr, wd)
        if state["exp_avg"].dtype == torch.uint8:
            low = low.contiguous()
            # The low-rank Adam direction, negated, into a zero buffer (lr 1, no decay), then projected back.
            target = torch.zeros_like(low)
            self._adam_8bit(low, target, state, group, t=t, lr=1.0)
            return LowRankUpdate(target, lr * group["scale"] * decay, decay)
        # (the caller's .to: 8-bit mode's float32 moments of a small R next to a bf16 weight and projector)
        direction, step_size = self._adam_float(low, state, group, t)
        return LowRankUpdate(direction, -step_size * group["scale"] * decay, decay)

    def _galore_torch_update(self, p, low, state: dict, group: dict, *, side: str, P, Q) -> None:
        """svd_signs="lapack" in float: galore-torch's own operations in its order (back-projection
        materialized, times scale, added at -step_size, then p <- p - lr wd p), so that no last-bit
        difference can flip a singular vector's sign at a later refresh (the 1-GEMM path above rounds differently)."""
        state["step"] += 1
        direction, step_size = self._adam_float(low, state, group, state["step"])
        p.add_(project_back(direction.to(p.dtype), side, P, Q) * group["scale"], alpha=-step_size)
        decay_after_update(p, group["lr"], group["weight_decay"])

    def _dense_adam(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        """Adam on an unprojected tensor `p` (plain tensors: a whole parameter, or this process's shard)."""
        lr, wd = group["lr"], group["weight_decay"]
        state["step"] += 1
        t = state["step"]
        if state["exp_avg"].dtype == torch.uint8:
            self._adam_8bit(grad.contiguous(), p, state, group, t=t, lr=lr)
        else:
            direction, step_size = self._adam_float(grad, state, group, t)
            p.add_(direction, alpha=-step_size)
        decay_after_update(p, lr, wd)

    def _dense_step(self, params: list[torch.Tensor], group: dict) -> None:
        """Adam on a group without projection. Float moments go through torch's _foreach ops in one call
        per operation for all parameters at the same step count (the same element-wise arithmetic as
        `_update`, without a Python loop over the parameters); 8-bit moments go through `_update`."""
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        by_step: dict[int, tuple[list, list, list, list]] = {}
        for p in params:
            if is_sharded(p):
                self._update(p, group)
                continue
            state = self.state[p]
            if "exp_avg" not in state:
                state.setdefault("step", 0)
                self._init_moments(state, p.grad)
            if state["exp_avg"].dtype == torch.uint8:
                self._update(p, group)
                continue
            state["step"] += 1
            lists = by_step.setdefault(state["step"], ([], [], [], []))
            for dst, src in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"])):
                dst.append(src)
        for t, (ps, grads, exp_avgs, exp_avg_sqs) in by_step.items():
            adam_float_foreach_step(ps, grads, exp_avgs, exp_avg_sqs, t=t, lr=lr, betas=group["betas"], eps=eps,
                                    weight_decay=wd, correct_bias=group.get("correct_bias", True))

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        keep_saved_state_dtypes(self, state_dict)
        self._group_index = None


class GaLoreAdamW8bit(GaLoreAdamW):
    """GaLoreAdamW with 8-bit blockwise Adam moments (bitsandbytes); tensors under `min_8bit_size`
    elements keep float32 moments, whatever the weights' dtype.

    The defaults are the 32-bit class's (galore-torch's 32-bit GaLoreAdamW: eps=1e-6, weight_decay=0), so
    switching precision changes only the moments' storage. galore-torch's GaLoreAdamW8bit defaults differ
    (bitsandbytes' eps=1e-8, weight_decay=1e-2): pass those explicitly to reproduce it."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, svd="exact", min_8bit_size=4096):
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, svd=svd, optim_bits=8, min_8bit_size=min_8bit_size
        )
