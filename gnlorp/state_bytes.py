"""The analytic optimizer-state bytes (METHOD.md's formulas) and the bytes an optimizer really holds; tests
check the two agree to the byte on tiny models (tests/unit/test_memory.py).

Each method's formula is its state_bytes (gnlorp/methods/<name>.py), built from the blocks below; the method
registry's estimate_state_bytes dispatches to it; `python -m gnlorp.memory` (gnlorp/memory.py) tabulates it.
Per target matrix W (m x n), rank r, element size b (bytes):
  AdamW          2 m n b
  LoRA           2 (m r + r n) b          (+ 2 m b for DoRA's magnitude)
  GaLore         projector + 2 b * |R|    with R = r x n (left), m x r (right) or r x r (full)
  GradNormLoRP   GaLore's + 2 m b         (Adam on the magnitude g)
LoRA's A and B and the magnitudes (DoRA, GradNormLoRP) are float32 next to 16-bit weights, so b = 4 for them.
8-bit moments take 1 byte per element plus a float32 scale per 256-element block, for tensors of at
least 4096 elements (smaller ones keep float32 moments, as in bitsandbytes), and two shared 256-entry
float32 quantization maps. torch.optim.AdamW also keeps a float32 `step` scalar per parameter.
torchao's AdamW8bit / AdamW4bit (precision=ao8bit / ao4bit, method=full) quantize a tensor's moments when it has
at least 4096 elements and a whole number of blocks: 8-bit, 1 byte per element + a float32 scale per 256-element
block + a 256-entry float32 map per moment; 4-bit, 1/2 byte + a float32 scale per 128 + a 16-entry map per moment;
other tensors keep moments in the parameter's dtype; every parameter has a float32 step (torchao_adam_bytes).

Below the methods: it imports only torch and the optimizer package.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .optim.layerwise import base_optimizer
from .optim.projector import low_rank_shape, projection_side
from .optim.targets import classifier_head_names, is_causal_lm, target_linear_names

BLOCKSIZE = 256
QMAP_BYTES = 2 * 256 * 4  # signed and unsigned dynamic maps, float32
MIN_8BIT_SIZE = 4096


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every distinct tensor storage the optimizer holds (moments, projectors, 8-bit block
    scales and quantization maps, step counters)."""
    opt = base_optimizer(optimizer)
    # FSDP: a DTensor counts this process's shard
    tensors = [getattr(v, "to_local", lambda v=v: v)() for st in opt.state.values() for v in st.values()
               if torch.is_tensor(v)]
    tensors += [q for pair in getattr(opt, "_qmaps", {}).values() for q in pair]
    tensors = [inner for t in tensors for inner in _inner_tensors(t)]
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding `t`'s data: `t` itself, or those of a wrapper subclass (torchao's quantized
    optimizer states keep codes, block scales and a map), walked down."""
    if type(t) is torch.Tensor or not hasattr(t, "__tensor_flatten__"):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [inner for name in names for inner in _inner_tensors(getattr(t, name))]


def _moments(numel: int, b: int, bits: int) -> tuple[int, bool]:
    """Bytes of two Adam moments over `numel` elements; and whether they are 8-bit."""
    if bits == 8 and numel >= MIN_8BIT_SIZE:
        return 2 * numel + 2 * 4 * math.ceil(numel / BLOCKSIZE), True
    return 2 * numel * (4 if bits == 8 else b), False


# ----------------------------------------------------------------------------- building blocks of the formulas
def size(p: torch.Tensor, element_bytes: int | None = None) -> int:
    return element_bytes or p.element_size()


def added_size(w: torch.Tensor, element_bytes: int | None = None) -> int:
    """A tensor a method adds next to a weight w (LoRA's A and B, DoRA's and GradNormLoRP's magnitude):
    float32 when w is 16-bit (peft's autocast_adapter_dtype; WeightNormLinear's g)."""
    return element_bytes or max(w.element_size(), 4)


def target_weights(model: nn.Module, cfg) -> dict[str, torch.Tensor]:
    """The weights of the targets `cfg` (a methods.MethodConfig) selects, by module name."""
    return {n: model.get_submodule(n).weight for n in target_linear_names(model, cfg.target_modules, conv1d=True)}


def dense_besides(model: nn.Module, skip: list[torch.Tensor], element_bytes: int | None = None) -> list[tuple[int, int]]:
    """(numel, element bytes) of every trainable parameter but those in `skip`."""
    ids = {id(w) for w in skip}
    return [(p.numel(), size(p, element_bytes)) for p in model.parameters() if p.requires_grad and id(p) not in ids]


def lora_dense(model: nn.Module, targets: dict[str, torch.Tensor], r: int, element_bytes: int | None = None,
               magnitude: bool = False) -> list[tuple[int, int]]:
    """LoRA's trainable tensors: the factors A (r x n) and B (m x r) of every target (and a magnitude per row
    with `magnitude`), plus the dense parameters LoRA trains beside them (optim/targets.py: a causal LM
    everything but the target layers, a classifier its head)."""
    causal = is_causal_lm(model)
    prefixes = tuple(f"{n}." for n in targets)
    head = tuple(f"{n}." for n in classifier_head_names(model))
    dense = [(p.numel(), size(p, element_bytes)) for pname, p in model.named_parameters()
             if not pname.startswith(prefixes) and (causal or pname.startswith(head))]
    for w in targets.values():
        m, n = w.shape
        b = added_size(w, element_bytes)
        dense += [(r * n, b), (m * r, b)] + ([(m, b)] if magnitude else [])
    return dense


def projected_bytes(w: torch.Tensor, r: int, proj_type: str, bits: int, element_bytes: int | None = None) -> tuple[int, bool]:
    """GaLore's state for one weight: the projector(s) and the two moments of the projected gradient; and
    whether those moments are 8-bit."""
    b = size(w, element_bytes)
    side = projection_side(w.shape, proj_type)
    m, n = w.shape
    rr = min(r, m, n)
    total = b * {"left": m * rr, "right": rr * n, "both": m * rr + rr * n}[side]
    lo = low_rank_shape(w.shape, r, side)
    moment_bytes, is8 = _moments(lo[0] * lo[1], b, bits)
    return total + moment_bytes, is8


def adam_bytes(dense: list[tuple[int, int]], bits: int, step_scalars: bool, extra: int = 0,
               extra_8bit: bool = False) -> int:
    """Two Adam moments per (numel, element bytes) tensor, plus `extra` bytes (e.g. projected states; say
    `extra_8bit` if they hold 8-bit moments), torch.optim.AdamW's float32 step per tensor (`step_scalars`,
    32-bit only) and the two 8-bit quantization maps when any moment is 8-bit."""
    total, any8 = extra, extra_8bit
    if step_scalars and bits == 32:
        total += 4 * len(dense)
    for numel, b in dense:
        moment_bytes, is8 = _moments(numel, b, bits)
        total += moment_bytes
        any8 |= is8
    return total + (QMAP_BYTES if any8 else 0)


def torchao_moment_bytes(numel: int, b: int, bits: int) -> int:
    """One Adam moment of a `numel`-element tensor of element size `b` in torchao's `bits`-bit AdamW."""
    from .optim.lowbit import BLOCK_SIZE, MIN_SIZE, QMAP_ENTRIES

    block = BLOCK_SIZE[bits]
    if numel >= MIN_SIZE and numel % block == 0:
        return numel * bits // 8 + 4 * (numel // block) + 4 * QMAP_ENTRIES[bits]
    return numel * b


def torchao_adam_bytes(dense: list[tuple[int, int]], bits: int) -> int:
    """torchao's AdamW8bit / AdamW4bit over (numel, element bytes) tensors: two moments and a float32 step each."""
    return sum(2 * torchao_moment_bytes(numel, b, bits) + 4 for numel, b in dense)
