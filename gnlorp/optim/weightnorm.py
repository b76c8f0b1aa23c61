"""GradNormLoRP's weight-normalized linear layer (paper Eq. 1-2; METHOD.md).

W = diag(g) V / ||V||_row, with a magnitude g (one per output unit) and a direction V. The layer is one
autograd Function: the forward builds W = V * (g / ||V||_row) (an m x n temporary), runs the Linear, and
saves x, V and two m-vectors, never W (the backward rebuilds it), so no second weight-sized tensor lives
between forward and backward. All the reparameterization's element-wise work is on m x n weights, not on
the tokens x m activations (scaling the output instead costs three activation-sized passes and as many
allocations per layer, forward and backward). The gradient V gets is the weight-normalized one,
(g/||v||)(I - v v^T/||v||^2) dL/dw per row: orthogonal to each row of V.

Under autocast the Linear runs in the autocast dtype, as nn.Linear's would (x and W cast to it, the
norms and the scale in float32).

The magnitude g is float32 (float64 with a float64 model) whatever the weights' dtype, also after
`model.to(torch.bfloat16)` (see `_apply`): a bf16 g would round ||v|| by up to 2^-8, so W at init would
differ from the original weight by that factor per row (outputs off by ~1e-2), and every small update of
g below bf16's resolution would be lost. Its gradient and Adam moments are float32 too. The forward and
`merged_weight` build W with the same function (`_scaled_weight`), so the merged model computes what the
trained one computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _compute_dtype(x: torch.Tensor, direction: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and torch.is_floating_point(x):
        return torch.get_autocast_dtype(device_type)
    return direction.dtype


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float32, or float64 for a float64 model


def _norm_and_scale(direction: torch.Tensor, magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||v||_row, g / ||v||_row), both in float32 (or float64)."""
    acc = _accumulate_dtype(direction.dtype)
    norm = torch.linalg.vector_norm(direction, dim=1, dtype=acc).clamp_min(torch.finfo(direction.dtype).tiny)
    return norm, magnitude.to(acc) / norm


def _scaled_weight(direction: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W = V * (g / ||V||_row), computed in float32 and rounded once to `dtype`."""
    return (direction * scale[:, None]).to(dtype)


class _WeightNormLinearFn(torch.autograd.Function):
    """y = x (diag(g) V / ||V||_row)^T + b, with the weight-norm gradients written out (module docstring)."""

    @staticmethod
    def forward(ctx, x, direction, magnitude, bias):
        norm, scale = _norm_and_scale(direction, magnitude)
        dtype = _compute_dtype(x, direction)
        xc = x.to(dtype)
        weight = _scaled_weight(direction, scale, dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.linear(xc, weight, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(xc, direction, scale, norm)
        ctx.dtypes = (x.dtype, magnitude.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        xc, direction, scale, norm = ctx.saved_tensors
        x_dtype, g_dtype, b_dtype = ctx.dtypes
        need_x, need_v, need_g, need_b = ctx.needs_input_grad
        grad_out = grad_out.to(xc.dtype)
        gy = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_v = grad_g = grad_b = None
        if need_x:
            weight = _scaled_weight(direction, scale, xc.dtype)
            grad_x = grad_out.matmul(weight).to(x_dtype)
        if need_v or need_g:
            grad_w = gy.t().matmul(xc.reshape(-1, xc.shape[-1])).to(norm.dtype)  # dL/dW, m x n
            # dL/dg = <dL/dW, v/||v||> per row; dL/dV = (g/||v||) (dL/dW - (dL/dg / ||v||) v)
            dot = (grad_w * direction).sum(dim=1).div_(norm)
            if need_g:
                grad_g = dot.to(g_dtype)
            if need_v:
                grad_v = torch.addcmul(grad_w, direction, (dot / norm)[:, None], value=-1.0)
                grad_v = grad_v.mul_(scale[:, None]).to(direction.dtype)
        if need_b:
            grad_b = gy.sum(dim=0).to(b_dtype)
        return grad_x, grad_v, grad_g, grad_b


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W||_row in float32 (float64 for a float64 W), computed as the forward computes it: the magnitude g
    that leaves W = diag(g) V / ||V||_row exactly unchanged for V = W."""
    return _norm_and_scale(weight, torch.ones((), dtype=_accumulate_dtype(weight.dtype)))[0]


class WeightNormLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # V shares the original weight's storage (no copy); g starts at ||W||_row, computed as the forward
        # computes it, so g / ||V|| is exactly 1 and the function is unchanged.
        self.direction = nn.Parameter(linear.weight.data, requires_grad=linear.weight.requires_grad)
        self.magnitude = nn.Parameter(row_norm(linear.weight.data))
        self.bias = linear.bias

    def _apply(self, fn, recurse=True):
        """`.to()`, `.bfloat16()`, `.cuda()`, ...: g follows the device but never drops below float32."""
        magnitude = self.magnitude.data
        super()._apply(fn, recurse)
        if self.magnitude.dtype != _accumulate_dtype(self.magnitude.dtype):
            self.magnitude.data = magnitude.to(device=self.magnitude.device, dtype=_accumulate_dtype(magnitude.dtype))
        return self

    def row_scale(self) -> torch.Tensor:
        """g / ||V||_row in float32 (or float64), as the forward computes it."""
        return _norm_and_scale(self.direction, self.magnitude)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WeightNormLinearFn.apply(x, self.direction, self.magnitude, self.bias)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The weight the forward uses (without autocast): bitwise the same."""
        return _scaled_weight(self.direction, self.row_scale(), self.direction.dtype)

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
