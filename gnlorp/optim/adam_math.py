"""The Adam arithmetic of every optimizer in this package, as functions of tensors and numbers (no optimizer
object, no param group, no state dict): GaLoreAdamW (32-bit and 8-bit, one process or FSDP's shards through
sharded.py) and SwitchAdamW call these, as torchao's `_AdamBase` shares one update function between its
8-bit and 4-bit variants. Each function updates the tensors it is given in place and returns what its
caller still needs; none reads anything else.

Two forms, each kept operation for operation as its optimizer had it (the oracle tests and FSDP's
bit-identity depend on the exact float operations):
  galore form (galore-torch / transformers' AdamW): step size lr sqrt(1 - b2^t) / (1 - b1^t), eps added
      to sqrt(v) *without* bias correction, decoupled weight decay *after* the update; `adam_float_step`
      (one tensor), `adam_8bit_step` (bitsandbytes' fused blockwise kernel), then `decay_after_update` or
      `decay_factor` (folded into the projected-back GEMM); `adam_float_foreach_step` (a list of tensors at
      one step count, update and decay included).
  torch form (torch.optim.AdamW, SwitchLoRA's StepAdamW): decay p <- (1 - lr wd) p *before* the update,
      eps added to sqrt(v) / sqrt(1 - b2^t), step counts as a tensor (one per row or column allowed);
      `adamw_step` on float moments, with `dequantize_blockwise` / `quantize_blockwise` around it for
      8-bit moments stored blockwise.
"""

from __future__ import annotations

import math

import torch

from .bnb import import_bitsandbytes

BLOCKSIZE = 256  # bitsandbytes' block size for blockwise 8-bit optimizer states


def bnb_functional():
    """bitsandbytes.functional, or a RuntimeError saying that 8-bit states need it."""
    try:
        F = import_bitsandbytes().functional
    except Exception as exc:  # ImportError, or a broken native library
        raise RuntimeError(
            f"8-bit optimizer states need a working bitsandbytes (>= 0.50), but importing it failed: {exc}"
        ) from exc
    return F


def bias_corrected_step_size(lr: float, betas: tuple[float, float], t: int, correct_bias: bool = True) -> float:
    """The galore form's step size at step t (1-based): lr sqrt(1 - b2^t) / (1 - b1^t), or lr uncorrected."""
    beta1, beta2 = betas
    if not correct_bias:
        return lr
    return lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)


def decay_factor(lr: float, weight_decay: float) -> float:
    """The galore form's decoupled decay after the update, as a factor: p <- (1 - lr wd) (p - update)
    (1.0 without decay), for callers that fold it into one GEMM (p <- decay p + coef back(direction))."""
    return 1.0 - lr * weight_decay if weight_decay > 0.0 else 1.0


def decay_after_update(p: torch.Tensor, lr: float, weight_decay: float) -> None:
    """The galore form's decoupled decay of an updated tensor, in place: p <- p - lr wd p."""
    if weight_decay > 0.0:
        p.add_(p, alpha=-lr * weight_decay)


def adam_float_step(grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *, t: int, lr: float,
                    betas: tuple[float, float], eps: float, correct_bias: bool = True) -> tuple[torch.Tensor, float]:
    """Galore form on float moments: advances exp_avg, exp_avg_sq in place and returns (direction, step_size),
    direction = m / (sqrt(v) + eps), so that the update is x <- x - step_size direction (decay: the caller's)."""
    beta1, beta2 = betas
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    step_size = bias_corrected_step_size(lr, betas, t, correct_bias)
    denom = exp_avg_sq.sqrt().add_(eps)
    return torch.div(exp_avg, denom, out=denom), step_size


def adam_float_foreach_step(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, *, t: int, lr: float,
                            betas: tuple[float, float], eps: float, weight_decay: float,
                            correct_bias: bool = True) -> None:
    """`adam_float_step` and the update, then the decoupled decay p <- p - lr wd p, on tensors all at step t,
    one torch._foreach call per operation (the same element-wise arithmetic, no Python loop per tensor)."""
    beta1, beta2 = betas
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    step_size = bias_corrected_step_size(lr, betas, t, correct_bias)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, eps)
    directions = torch._foreach_div(exp_avgs, denoms)
    torch._foreach_add_(params, directions, alpha=-step_size)
    if weight_decay > 0.0:
        torch._foreach_add_(params, params, alpha=-lr * weight_decay)


def adam_8bit_step(grad: torch.Tensor, target: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                   *,
                   absmax1: torch.Tensor, absmax2: torch.Tensor, qmaps: tuple[torch.Tensor, torch.Tensor],
                   t: int, lr: float, betas: tuple[float, float], eps: float) -> None:
    """Galore form on bitsandbytes' blockwise 8-bit moments (uint8 codes over `qmaps`, signed and unsigned
    dynamic maps, a float32 absmax per 256 elements): target <- target - lr direction, moments and absmax
    updated in place, no weight decay. Every bitsandbytes argument goes by keyword (galore-torch's positional
    call lands on max_unorm=100, skip_zeros=True with bitsandbytes >= 0.50). `grad` must be contiguous."""
    beta1, beta2 = betas
    qmap1, qmap2 = qmaps
    bnb_functional().optimizer_update_8bit_blockwise(
        "adam", grad, target, exp_avg, exp_avg_sq,
        beta1=beta1, beta2=beta2, beta3=0.0, alpha=0.0, eps=eps, step=t,
        lr=lr, qmap1=qmap1, qmap2=qmap2,
        absmax1=absmax1, absmax2=absmax2,
        weight_decay=0.0, gnorm_scale=1.0, skip_zeros=False,
    )


def adamw_step(p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
               step: torch.Tensor, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Torch form on float moments, all in place: p <- (1 - lr wd) p, then Adam with the bias corrections of
    `step` (the step count after this step: a 0-d tensor, or one per row (r, 1) / per column (1, c))."""
    beta1, beta2 = betas
    if weight_decay != 0.0:
        p.mul_(1.0 - lr * weight_decay)
    exp_avg.lerp_(grad.to(exp_avg.dtype), 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    bias1 = 1.0 - beta1 ** step
    bias2_sqrt = (1.0 - beta2 ** step).sqrt()
    denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
    p.add_((exp_avg / denom) * (-lr / bias1))


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The float32 values (shaped like `like`) of blockwise 8-bit `codes` with per-block `absmax` over `qmap`."""
    x = bnb_functional().dequantize_blockwise(codes, absmax=absmax, code=qmap, blocksize=BLOCKSIZE)
    return x.view_as(like).float()


def quantize_blockwise(x: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor) -> None:
    """codes, absmax <- the blockwise 8-bit quantization of x over `qmap` (in place)."""
    bnb_functional().quantize_blockwise(x.contiguous(), code=qmap, absmax=absmax, out=codes, blocksize=BLOCKSIZE)
