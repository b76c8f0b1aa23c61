"""APOLLO and APOLLO-Mini (Zhu et al., arXiv 2412.05270): AdamW-level updates from SGD-level state.

Each projected weight W (m x n) keeps Adam moments only on a rank-r projection R of its gradient G (a seeded
Gaussian projector, std 1/sqrt(r), drawn again every `update_proj_gap` steps; or GaLore's SVD with
proj="svd"). The low-rank Adam update R~ = m / (sqrt(v) + eps) is never projected back: it only measures
how much Adam would rescale G, and the full-rank G is scaled by that instead:
  channel (APOLLO):      s_i = ||R~_i|| / (||R_i|| + 1e-8)  per row of W (m >= n) or column (m < n)
  tensor (APOLLO-Mini):  s   = ||R~||  / (||R||  + 1e-8)
then  W <- W - step_size * sqrt(scale) * limit(s * G)  and the galore-form decoupled decay, where `limit` is
Fira's norm-growth limiter (the update's norm grows at most 1.01x per step) and `scale_front` applies
sqrt(scale) before it instead of after (the reference's APOLLO-Mini recipe).

Param groups follow apollo-torch's APOLLOAdamW (apollo-torch==1.0.3, the test oracle): a group with a `rank`
key is APOLLO's (`update_proj_gap`, `scale`, `proj` = random | svd, `scale_type` = channel | tensor; also
`scale_front` and `norm_growth_limiter`, global flags there, per group here); a group without one is plain
AdamW (GaLoreAdamW's). Only proj_type "std" (the smaller side) is accepted, the only one whose channels the
reference gets right. In float32 the trajectory equals the reference's to the last bit.

What differs from apollo-torch, each keeping the paper's behaviour:
  - the projector is not a Python object in the state but plain tensors and ints (proj_left / proj_right,
    `seed` of the next draw, `scaled_grad` the limiter's last norm as a float32 0-d tensor), so
    state_dict() round-trips, loads with torch.load(weights_only=True) and resumes bit for bit;
  - the limiter's max(ratio, 1.01) is a clamp on the device (the reference's Python max() syncs the GPU);
  - 8-bit moments are accepted (the Adam direction from bitsandbytes' kernel, bias correction included).
The seeds are the reference's: parameter i (1-based, over all groups) starts at seed i and each draw
advances it by next_seed, so every process and every resume draws the same projectors.
"""

from __future__ import annotations

import math

import torch

from .adam_math import adam_float_step, decay_after_update
from .galore_adamw import GaLoreAdamW
from .projector import compute_projection, project, projection_side
from .sharded import is_sharded

PROJS = ("random", "svd")
SCALE_TYPES = ("channel", "tensor")
LIMIT = 1.01  # the norm-growth limit per step of APOLLO and Fira (the references')


def stable_randn(shape: tuple[int, int], seed: int, device: torch.device) -> torch.Tensor:
    """apollo-torch's draw: float32 N(0, 1) from a fresh generator on `device` seeded with `seed`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


def next_seed(seed: int, adv: int = 0xF) -> int:
    """apollo-torch's seed advance: the last of `adv` int64 draws from a CPU generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, torch.iinfo(torch.int64).max, (adv,), generator=generator).tolist()[-1]


def random_projection(grad: torch.Tensor, rank: int, side: str, seed: int) -> torch.Tensor:
    """The Gaussian projector (std 1/sqrt(rank)) for `side`: m x r (left) or r x n (right), in grad's dtype."""
    m, n = grad.shape
    proj = stable_randn((m, rank) if side == "left" else (rank, n), seed, grad.device) / math.sqrt(rank)
    return proj.to(grad.dtype)


def scaling_factor(direction: torch.Tensor, low: torch.Tensor, side: str, scale_type: str) -> torch.Tensor:
    """||Adam's low-rank update|| / ||low-rank gradient||: per channel of W (a column (m,1) or row (n,)
    broadcast), or one 0-d tensor."""
    if scale_type == "tensor":
        return torch.norm(direction) / (torch.norm(low) + 1e-8)
    dim = 1 if side == "right" else 0  # right: R is m x r, one factor per row of W; left: r x n, per column
    factor = torch.norm(direction, dim=dim) / (torch.norm(low, dim=dim) + 1e-8)
    return factor.unsqueeze(1) if dim == 1 else factor


def limit_norm_growth(update: torch.Tensor, state: dict, key: str) -> torch.Tensor:
    """The norm-growth limiter of APOLLO and Fira: `update` shrunk so that its norm grows at most LIMIT-fold from
    the last step's, kept in state[key] (float32). The references' max(norm / (last + 1e-8), 1.01) / 1.01; a clamp
    gives the same bits without a sync."""
    norm = torch.norm(update)
    if key in state:
        limiter = torch.clamp(norm / (state[key] + 1e-8), min=LIMIT) / LIMIT
        update = update / limiter
        norm = norm / limiter
    state[key] = norm.float()
    return update


class ApolloAdamW(GaLoreAdamW):
    """APOLLO's AdamW (module docstring); GaLoreAdamW's for groups without `rank` and for everything else."""

    @staticmethod
    def _check_group(group: dict) -> None:
        if "rank" in group:
            group.setdefault("proj", "random")
            group.setdefault("scale_type", "channel")
            group.setdefault("scale_front", False)
            group.setdefault("norm_growth_limiter", True)
            group.setdefault("proj_type", "std")
            if group["proj"] not in PROJS:
                raise ValueError(f"proj must be one of {PROJS}, got {group['proj']!r}")
            if group["scale_type"] not in SCALE_TYPES:
                raise ValueError(f"scale_type must be one of {SCALE_TYPES}, got {group['scale_type']!r}")
            if group["proj_type"] != "std":
                raise ValueError(f"APOLLO projects the smaller side only (proj_type 'std'), got {group['proj_type']!r}")
        GaLoreAdamW._check_group(group)

    def _seed_of(self, p: torch.Tensor) -> int:
        """p's first seed: its 1-based position over every group's parameters (apollo-torch's params_idx)."""
        return 1 + [id(q) for g in self.param_groups for q in g["params"]].index(id(p))

    def _update(self, p: torch.Tensor, group: dict) -> None:
        if "rank" not in group:
            return super()._update(p, group)
        if is_sharded(p):
            raise RuntimeError("ApolloAdamW cannot step FSDP shards: its channel norms and projector span whole rows "
                               "and columns of a weight (use train.parallel=ddp).")
        state = self.state[p]
        state.setdefault("step", 0)
        state.setdefault("seed", self._seed_of(p))
        grad = p.grad
        side = projection_side(p.shape, "std")
        if self._refresh_due(state, group):
            self._set_apollo_projection(state, p, grad, group, side)
        low = project(grad, side, state.get("proj_left"), state.get("proj_right"))
        if "exp_avg" not in state:
            self._init_moments(state, low)
        state["step"] += 1
        t, lr = state["step"], group["lr"]
        if state["exp_avg"].dtype == torch.uint8:
            # bitsandbytes' step with lr 1 into a zero buffer: minus the bias-corrected direction
            direction = torch.zeros_like(low)
            self._adam_8bit(low.contiguous(), direction, state, group, t=t, lr=1.0)
            step_size = lr
        else:
            direction, step_size = self._adam_float(low, state, group, t)
        scaled = grad * scaling_factor(direction, low, side, group["scale_type"])
        root = math.sqrt(group["scale"])
        if group["scale_front"]:
            scaled *= root
        if group["norm_growth_limiter"]:
            scaled = limit_norm_growth(scaled, state, "scaled_grad")
        if not group["scale_front"]:
            scaled *= root
        p.add_(scaled.to(p.dtype), alpha=-step_size)
        decay_after_update(p, lr, group["weight_decay"])

    def _set_apollo_projection(self, state: dict, p: torch.Tensor, grad: torch.Tensor, group: dict, side: str) -> None:
        rank = int(group["rank"])
        if group["proj"] == "random":
            proj = random_projection(grad, rank, side, state["seed"])
            state["seed"] = next_seed(state["seed"])
            state["proj_left" if side == "left" else "proj_right"] = proj
        else:
            self._set_projection(state, p, grad, group, side)
