"""SwitchLoRA (Zhou, Wang & Xu, arXiv 2406.06564): LoRA whose vectors are swapped, a few per step, with
vectors from a pool of candidates, so that the trained subspace keeps moving during pre-training.

Facts from the reference code (github.com/asfsdsf/SwitchLoRA, Apache-2.0; file switchlora/switch_lora.py
unless another file is named), re-implemented here:
  * W (m x n) is frozen; B (m x r) and A (r x n) train; scaling = lora_alpha / r.
  * Each layer keeps min(m, n) candidates for A's rows and as many for B's columns, drawn
    uniform(-bound, bound) with the bounds of `lora_utils.get_init_lora_bound`; A and B start as the
    last r candidates (B's window rotated by r // 2) (`SwitchLoraLayer._init_candidates`,
    `_init_orthogonal_lora`, continuous mode, the default).
  * Before update step t (0-based), each layer swaps k vectors of A and k of B, k = r / interval(t)
    rounded stochastically, interval(t) = switch_lora_interval / 0.3 ** ((t + 1) / D) with
    D = descent_rate * total_steps (`_get_switch_rate` exponential, `_get_switch_replace_num`); k is
    capped so that the A and B cursors never reach each other's frozen vectors (`SwitchLoraLayer.switch`).
  * Rows are swapped cyclically (a cursor over A's rows, one over B's columns), each taking the candidate
    after the previous row's (`_select_indices`, continuous mode); W absorbs the change,
    W += B[:, i] (A[i] - A_new[i]) * scaling, the old vector goes back to its slot in the pool
    (`_switch_chosen_indices`).
  * Swapping A's row i freezes B's column i (and swapping B's column i freezes A's row i) for
    adam_warm_step steps (its gradient is zeroed) and resets that counterpart's Adam moments and its own
    step count (`zero_lora_states`, `correct_switched_lora`); the per-row step count lives in the
    optimizer (switchlora/optimizer.py `StepAdamW`: step of shape (r, 1) for A, (1, r) for B, AdamW with
    the decay applied before the update).

Our deviations, each for exactness or testability: the layer subtracts the initial B A * scaling from W,
so that preparing a model leaves its function unchanged (the reference adds B A to a from-scratch W); the
per-step random draw is a pure function of (layer seed, step) instead of numpy's global RNG, so resume is
exact; the swap runs right after optimizer step t (before step t + 1's forward) instead of between step
t + 1's backward and its update; gradients of frozen vectors are zeroed inside the optimizer, after
gradient clipping (as in the reference); the number of swaps is also capped by the free candidates
(min(m, n) - r), which the reference leaves unchecked.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from .adapter_linear import FactorsLinear
from .adam_math import BLOCKSIZE, adamw_step, dequantize_blockwise, quantize_blockwise
from .bnb import adam_qmaps
from .state_dtypes import keep_saved_state_dtypes

POOLS = ("candidates_A", "candidates_B")


# ----------------------------------------------------------------------------- the schedule
def init_bounds(m: int, n: int, r: int) -> tuple[float, float]:
    """Uniform bounds of A's and B's candidates (lora_utils.get_init_lora_bound: Kaiming-like, with
    A dB and dA B of the same size)."""
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    std_a = ((m ** 0.5 * r) / n ** 1.5) ** 0.25 * gain ** 0.5
    std_b = (r / (m * n) ** 0.5) ** 0.25 * gain ** 0.5
    return math.sqrt(3.0) * std_a, math.sqrt(3.0) * std_b


def switch_interval(step: int, base_interval: float, descend_steps: float) -> float:
    """Steps per full turn of the r vectors before update `step` (0-based): base / 0.3 ** ((step + 1) / D),
    so the switching frequency falls to 0.3x by step D (switch_lora._get_switch_rate, floored at 1e-8)."""
    rate = max(0.3 ** ((step + 1) / descend_steps), 1e-8)
    return base_interval / rate


def expected_switches(step: int, rank: int, base_interval: float, descend_steps: float) -> float:
    """Mean number of A rows (and of B columns) a layer swaps before update `step`: r / interval."""
    return rank / switch_interval(step, base_interval, descend_steps)


def switch_draw(seed: int, step: int) -> float:
    """The uniform [0, 1) number that rounds the swap count of one layer at one step."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return float(torch.rand((), generator=g, dtype=torch.float64))


def switch_count(step: int, rank: int, base_interval: float, descend_steps: float, seed: int) -> int:
    """r / interval rounded stochastically (switch_lora._get_switch_replace_num), before the layer's cap."""
    mean = expected_switches(step, rank, base_interval, descend_steps)
    whole = int(mean)
    return whole + int(switch_draw(seed, step) < mean - whole)


# ----------------------------------------------------------------------------- the layer
class SwitchLoRALinear(FactorsLinear):
    """y = x W^T + b + dropout(x) A^T B^T * scaling, with candidate pools and the bookkeeping of the swaps
    in buffers (so a checkpoint holds them): selected_A/B (pool index of each row of A / column of B),
    frozen_A/B (steps each A row / B column stays frozen), cursor (next A row, next B column), switched
    (A rows, B columns swapped so far), seed (of the per-step draws)."""

    def __init__(self, linear: nn.Linear, rank: int, lora_alpha: float, *, lora_dropout: float = 0.0,
                 offload: bool = True, seed: int = 0):
        super().__init__()
        w = linear.weight.detach()
        m, n = w.shape
        r = int(rank)
        self.in_features, self.out_features, self.rank = n, m, r
        self.scaling = lora_alpha / r
        self.offload = bool(offload)
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        pools = min(m, n)
        bound_a, bound_b = init_bounds(m, n, r)
        kw = dict(dtype=w.dtype, device=w.device)
        cand_a = torch.empty(pools, n, **kw).uniform_(-bound_a, bound_a)
        cand_b = torch.empty(pools, m, **kw).uniform_(-bound_b, bound_b)
        sel_a = torch.arange(pools - r, pools, device=w.device)
        sel_b = torch.roll(sel_a, r // 2)
        self.lora_A = nn.Parameter(cand_a[sel_a].clone())
        self.lora_B = nn.Parameter(cand_b[sel_b].T.contiguous())
        with torch.no_grad():
            self.weight.sub_(self.lora_B @ self.lora_A, alpha=self.scaling)
        pool_device = "cpu" if self.offload else w.device
        self.register_buffer("candidates_A", cand_a.to(pool_device))
        self.register_buffer("candidates_B", cand_b.to(pool_device))
        self.register_buffer("selected_A", sel_a)
        self.register_buffer("selected_B", sel_b)
        self.register_buffer("frozen_A", torch.zeros(r, dtype=torch.int32, device=w.device))
        self.register_buffer("frozen_B", torch.zeros(r, dtype=torch.int32, device=w.device))
        self.register_buffer("cursor", torch.tensor([0, r // 2], device=w.device))
        self.register_buffer("switched", torch.zeros(2, dtype=torch.int64, device=w.device))
        self.register_buffer("seed", torch.tensor(int(seed), device=w.device))

    def _apply(self, fn, recurse=True):
        # Offloaded pools stay on the CPU when the model moves (or is cast): park them outside _buffers.
        if not self.offload:
            return super()._apply(fn, recurse)
        parked = {k: self._buffers.pop(k) for k in POOLS}
        try:
            return super()._apply(fn, recurse)
        finally:
            self._buffers.update(parked)

    @torch.no_grad()
    def tick(self) -> None:
        """One optimizer step has passed: every frozen vector has one step less to wait."""
        self.frozen_A.sub_(1).clamp_(min=0)
        self.frozen_B.sub_(1).clamp_(min=0)

    @torch.no_grad()
    def switch(self, count: int, warm_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Swap up to `count` rows of A and as many columns of B for pool candidates; W absorbs the change.
        Returns (A rows swapped, B columns swapped): the B columns resp. A rows whose Adam state is to reset."""
        r, pools = self.rank, self.candidates_A.shape[0]
        none = torch.empty(0, dtype=torch.long, device=self.cursor.device)
        ca, cb = (int(c) for c in self.cursor.tolist())
        fixed_a, fixed_b = int((self.frozen_A > 0).sum()), int((self.frozen_B > 0).sum())
        available = min((ca - fixed_a - cb) % r, (cb - fixed_b - ca) % r, pools - r)
        k = min(int(count), available)
        if k <= 0:
            return none, none
        steps = torch.arange(k, device=self.cursor.device)
        rows, cols = (ca + steps) % r, (cb + steps) % r
        self._swap(self.lora_A.data, self.lora_B.data, self.weight.data, self.candidates_A, selected=self.selected_A,
                   frozen_other=self.frozen_B, idx=rows, warm_steps=warm_steps)
        self._swap(self.lora_B.data.T, self.lora_A.data.T, self.weight.data.T, self.candidates_B, selected=self.selected_B,
                   frozen_other=self.frozen_A, idx=cols, warm_steps=warm_steps)
        self.cursor.copy_(torch.tensor([(ca + k) % r, (cb + k) % r]))
        self.switched.add_(k)
        return rows, cols

    def _swap(self, mat, other, weight, pool, *, selected, frozen_other, idx, warm_steps) -> None:
        """Rows `idx` of `mat` (A, or B^T) take the next pool candidates; `other` is B (or A^T), `weight`
        W (or W^T), all views, so the in-place writes land in the parameters."""
        pools = pool.shape[0]
        first = int(selected[(int(idx[0]) - 1) % self.rank]) + 1
        new_idx = (first + torch.arange(len(idx), device=selected.device)) % pools
        new = pool[new_idx.to(pool.device)].to(device=mat.device, dtype=mat.dtype)
        old = mat[idx]
        weight.addmm_(other[:, idx], old - new, alpha=self.scaling)
        pool[selected[idx].to(pool.device)] = old.to(device=pool.device, dtype=pool.dtype)
        mat[idx] = new
        selected[idx] = new_idx
        frozen_other[idx] = int(warm_steps)


def switchlora_layers(model: nn.Module) -> list[SwitchLoRALinear]:
    return [m for m in model.modules() if isinstance(m, SwitchLoRALinear)]


# ----------------------------------------------------------------------------- the optimizer
def _zero_code(signed: bool) -> int:
    qmap = adam_qmaps(torch.device("cpu"), {})[0 if signed else 1]
    return int((qmap == 0).nonzero()[0])


class SwitchAdamW(Optimizer):
    """AdamW (decay before the update, as torch.optim.AdamW and the reference's StepAdamW) whose step count
    is per row of A and per column of B, so that a swap can restart the bias correction of just those
    vectors. A group's `per` key says how: "row" (step of shape (rows, 1)), "col" ((1, cols)), or absent
    (one float32 step per tensor, as torch.optim.AdamW keeps).

    Frozen vectors: `set_frozen(p, counter, dim)` names a counter (a SwitchLoRALinear buffer); slices of p
    along `dim` whose counter is > 0 get a zero gradient at each step (their step count still advances,
    as in the reference).

    optim_bits=8: moments of tensors with >= min_8bit_size elements are stored as bitsandbytes' blockwise
    8-bit (uint8 codes over the dynamic map, a float32 absmax per 256 elements: the same storage as
    bnb.optim.AdamW8bit); each step dequantizes, updates in float32 with the per-row bias corrections,
    and quantizes back (bitsandbytes' fused kernel takes one step count per tensor, so it cannot be used).
    A reset writes the code of an exact 0 into the reset elements only, so it is exact and leaves the
    other elements of a shared block untouched.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, optim_bits: int = 32, min_8bit_size: int = 4096):
        if optim_bits not in (8, 32):
            raise ValueError(f"optim_bits must be 8 or 32, got {optim_bits}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.optim_bits, self.min_8bit_size = optim_bits, min_8bit_size
        self._frozen: dict[int, tuple[torch.Tensor, int]] = {}
        self._qmaps: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if optim_bits == 8:
            self._zero = (_zero_code(True), _zero_code(False))

    def set_frozen(self, p: torch.Tensor, counter: torch.Tensor, dim: int) -> None:
        self._frozen[id(p)] = (counter, dim)

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        per = group.get("per")
        shape = (p.shape[0], 1) if per == "row" else (1, p.shape[1]) if per == "col" else ()
        state["step"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
        if self.optim_bits == 8 and p.numel() >= self.min_8bit_size:
            blocks = math.ceil(p.numel() / BLOCKSIZE)
            signed, unsigned = self._zero
            state["exp_avg"] = torch.full_like(p, signed, dtype=torch.uint8, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.full_like(p, unsigned, dtype=torch.uint8, memory_format=torch.contiguous_format)
            state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
            state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
        else:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return state

    def _moments(self, state: dict, p: torch.Tensor):
        if state["exp_avg"].dtype != torch.uint8:
            return state["exp_avg"], state["exp_avg_sq"]
        q1, q2 = adam_qmaps(p.device, self._qmaps)
        return (dequantize_blockwise(state["exp_avg"], state["absmax1"], q1, p),
                dequantize_blockwise(state["exp_avg_sq"], state["absmax2"], q2, p))

    def _store(self, state: dict, p: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
        if state["exp_avg"].dtype != torch.uint8:
            return
        q1, q2 = adam_qmaps(p.device, self._qmaps)
        quantize_blockwise(m, state["exp_avg"], state["absmax1"], q1)
        quantize_blockwise(v, state["exp_avg_sq"], state["absmax2"], q2)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p] if self.state[p] else self._init_state(p, group)
                grad = p.grad
                if id(p) in self._frozen:
                    counter, dim = self._frozen[id(p)]
                    frozen = (counter > 0).nonzero().flatten()
                    if len(frozen):
                        grad.index_fill_(dim, frozen.to(grad.device), 0.0)
                state["step"] += 1
                m, v = self._moments(state, p)
                adamw_step(p, grad, m, v, state["step"], lr=group["lr"], betas=group["betas"], eps=group["eps"],
                           weight_decay=group["weight_decay"])
                self._store(state, p, m, v)
        return loss

    @torch.no_grad()
    def reset(self, p: torch.Tensor, index: torch.Tensor, dim: int) -> None:
        """Zero the moments and the step count of slices `index` of p along `dim` (rows of A: dim 0,
        columns of B: dim 1)."""
        state = self.state.get(p)
        if not state or len(index) == 0:
            return
        index = index.to(p.device)
        step = state["step"]
        if step.dim() == 2:
            step.index_fill_(dim, index, 0.0)
        for key, zero in (("exp_avg", 0), ("exp_avg_sq", 1)):
            t = state[key]
            value = self._zero[zero] if t.dtype == torch.uint8 else 0
            t.index_fill_(dim, index, value)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        keep_saved_state_dtypes(self, state_dict)
