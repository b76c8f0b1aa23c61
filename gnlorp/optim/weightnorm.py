"""GradNormLoRP's weight-normalized linear layer (paper Eq. 1-2; METHOD.md).

W = diag(g) V / ||V||_row, with a magnitude g (one per output unit) and a direction V. The forward pass
never materializes W: y = (x V^T) * (g / ||V||_row) + b, so autograd saves x and V (the parameter itself),
not a second m x n weight. The gradient autograd gives V is the weight-normalized one,
(g/||v||)(I - v v^T/||v||^2) dL/dw per row: orthogonal to each row of V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # V shares the original weight's storage (no copy); g starts at ||W||_row so the function is unchanged.
        self.direction = nn.Parameter(linear.weight.data, requires_grad=linear.weight.requires_grad)
        self.magnitude = nn.Parameter(linear.weight.data.float().norm(dim=1).to(linear.weight.dtype))
        self.bias = linear.bias

    def row_scale(self) -> torch.Tensor:
        return self.magnitude / self.direction.norm(dim=1).clamp_min(torch.finfo(self.direction.dtype).tiny)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.direction)
        out = out * self.row_scale().to(out.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        return (self.direction.float() * self.row_scale().float()[:, None]).to(self.direction.dtype)

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.direction.device, dtype=self.direction.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight())
            if self.bias is not None:
                linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_weight_norm(model: nn.Module, target_names: list[str]) -> list[WeightNormLinear]:
    """Replace each named nn.Linear by a WeightNormLinear in place; returns the new modules."""
    wrapped = []
    for name in target_names:
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is a {type(linear).__name__}, not an nn.Linear")
        wn = WeightNormLinear(linear)
        _set_submodule(model, name, wn)
        wrapped.append(wn)
    return wrapped


def merge_weight_norm(model: nn.Module) -> nn.Module:
    """Write W = diag(g) V / ||V||_row back into plain nn.Linear layers: a vanilla model, no inference cost."""
    names = [n for n, m in model.named_modules() if isinstance(m, WeightNormLinear)]
    for name in names:
        _set_submodule(model, name, model.get_submodule(name).to_linear())
    return model
