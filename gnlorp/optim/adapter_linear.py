"""What ReLoRA's and SwitchLoRA's layers share: a frozen W (with its bias) plus trainable factors B (m x r) and
A (r x n) scaled by `scaling`, y = x Wᵀ + b + (dropout(x) Aᵀ Bᵀ) · scaling; merged, W + B A · scaling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FactorsLinear(nn.Module):
    """Subclasses set weight, bias, lora_A, lora_B, dropout and scaling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_B @ self.lora_A) * self.scaling

