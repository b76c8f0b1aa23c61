"""ReLoRA (Lialin et al., 2023): LoRA whose product B A is merged into the frozen W every K steps, after
which the factors restart (A Kaiming-uniform, B zero), the optimizer state of the factors is reset (or
magnitude-pruned), and the learning rate re-warms up from zero on the cosine it follows.

Facts from the reference code (github.com/Guitaricet/relora): the layer and the merge
(peft_pretraining/relora.py `ReLoRaLinear.__init__`, `merge_and_reinit`: W += B A * lora_alpha / r,
kaiming_uniform_(A, a=sqrt(5)), zeros_(B)); the optimizer reset (peft_pretraining/training_utils.py
`optimizer_reset`: only the LoRA parameters' exp_avg and exp_avg_sq; `reset_optimizer_on_relora` zeroes
them, `optimizer_magnitude_pruning` p zeroes the fraction p of smallest magnitude; the step count is
kept); the jagged cosine (training_utils.py `_get_cosine_schedule_with_multiple_warmups_lambda`: a first
linear warm-up, then one cosine from the end of it to the last step, and after every restart a linear
re-warm-up over `restart_warmup_steps` up to the value the cosine has at the end of that re-warm-up).

Our deviations: the reference merges and resets after update step K + 1 (update_step % K == 1), one step
after its schedule drops the lr to 0; here the merge and the reset follow step K and the first step after
them already takes 1 / restart_warmup of the target lr (as our warmup_cosine starts at 1 / warmup), so
without restarts the schedule is exactly warmup_cosine. The reset zeroes exactly (the reference prunes
99.9% at random, a workaround for ZeroRedundancyOptimizer).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from .adapter_linear import FactorsLinear


class ReLoRALinear(FactorsLinear):
    """y = x W^T + b + dropout(x) A^T B^T * scaling; W and b frozen. B starts at zero, so wrapping a layer
    leaves its function unchanged. Buffers (so checkpoints carry them): `resets` counts the merges, `seed`
seeds the re-initializations of A."""

    def __init__(self, linear: nn.Linear, rank: int, lora_alpha: float, lora_dropout: float = 0.0, seed: int = 0):
        super().__init__()
        w = linear.weight.detach()
        m, n = w.shape
        self.in_features, self.out_features, self.rank = n, m, int(rank)
        self.scaling = lora_alpha / self.rank
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(self.rank, n, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(m, self.rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("resets", torch.zeros((), dtype=torch.int64, device=w.device))
        self.register_buffer("seed", torch.tensor(int(seed), device=w.device))

    @torch.no_grad()
    def merge_and_reinit(self) -> None:
        """W += B A * scaling; A <- Kaiming-uniform (drawn from (seed, resets) on the CPU: resumable, and the
        same on any device); B <- 0. The layer's function is unchanged."""
        from .sharded import copy_rows_into, full, local

        # under FSDP2 W and B are split by the same rows: each rank adds its rows of B A (A gathered, r x n)
        local(self.weight).addmm_(local(self.lora_B), full(self.lora_A), alpha=self.scaling)
        self.resets.add_(1)
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(self.resets))
        a = torch.empty(self.lora_A.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)
        copy_rows_into(self.lora_A, a)
        self.lora_B.zero_()


def relora_layers(model: nn.Module) -> list[ReLoRALinear]:
    return [m for m in model.modules() if isinstance(m, ReLoRALinear)]


@torch.no_grad()
def prune_optimizer_state(optimizer, params: Iterable[torch.Tensor], ratio: float) -> None:
    """Zero the fraction `ratio` of smallest-magnitude entries of each moment of `params` (1.0: all of them,
    the reference's optimizer reset). bitsandbytes 8-bit moments (uint8 `state1`/`state2`) are reset by
    zeroing their block scales (every entry then dequantizes to exactly 0); they only support ratio 1."""
    for p in params:
        state = optimizer.state.get(p)
        if not state:
            continue
        for key, scale in (("exp_avg", "absmax1"), ("exp_avg_sq", "absmax2"), ("state1", "absmax1"), ("state2", "absmax2")):
            t = state.get(key)
            if t is None:
                continue
            if t.dtype == torch.uint8:
                if ratio < 1.0:
                    raise ValueError("magnitude pruning of 8-bit moments is not supported; use ratio 1")
                state[scale].zero_()
            elif ratio >= 1.0:
                t.zero_()
            elif ratio > 0.0:
                from .sharded import full

                magnitude = t.abs()  # on FSDP shards the threshold is the whole tensor's, as on one process
                threshold = float(torch.quantile(full(magnitude).flatten().float(), ratio).to(t.dtype))
                t.mul_(magnitude > threshold)


def jagged_cosine(total_steps: int, warmup_ratio: float, min_ratio: float, reset_every: int,
                  restart_warmup: int) -> Callable[[int], float]:
    """lr factor of update step `step` + 1 (LambdaLR's convention): warmup_cosine, except that each of the
    `restart_warmup` steps after a restart (after steps K, 2K, ...) climbs linearly to the cosine's value
    at the end of that re-warm-up."""
    warmup = int(warmup_ratio * total_steps)

    def cosine(step: int) -> float:
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        since = step % reset_every
        if step >= reset_every and since < restart_warmup:
            return (since + 1) / restart_warmup * cosine(step - since + restart_warmup)
        return cosine(step)

    return factor
