"""SwitchLoRA (Zhou, Wang & Xu, arXiv 2406.06564; gnlorp/optim/switchlora.py): frozen W, LoRA factors whose
vectors are swapped with candidate vectors on a schedule, per-row-step AdamW; merged into plain nn.Linear
after training. Defaults from the reference code (asfsdsf/SwitchLoRA)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..schema import LoRAFamily, setting
from .spec import Labels, MethodSpec


@dataclass
class SwitchLoRASettings(LoRAFamily):
    name: str = setting("switchlora", "SwitchLoRA (Zhou, Wang & Xu, arXiv 2406.06564)")
    lora_alpha: float = setting(1.0, "scaling is lora_alpha / rank (the reference's --lora_alpha 1)", gt=0,
                                finite=True)
    switch_lora_interval: int = setting(40, "steps per full turn of the r vectors at the start "
                                            "(>= 2 x adam_warm_step)", ge=2)
    switch_descent_rate: float = setting(0.1, "the switching frequency falls exponentially to 0.3x by this "
                                              "fraction of the steps", gt=0, finite=True)
    adam_warm_step: int = setting(5, "steps a swapped vector's counterpart stays frozen (its Adam state reset)",
                                  ge=0)
    offload_candidates: bool = setting(True, "candidate pools (min(m,n) vectors per factor and layer) in CPU memory")


METHOD = MethodSpec("switchlora", SwitchLoRASettings, Labels(glue="SwitchLoRA", c4="SwitchLoRA", memory="SwitchLoRA"),
                    order=60, low_rank=True, color="#8c564b",
                    fsdp_refusal="a switch writes B(A_old - A_new) into W and resets single rows of the factors' "
                                 "moments and step counts, which FSDP's row shards of W, B and A split over the ranks")


def _check(model, cfg) -> list[str]:
    from ..errors import UserError
    from ..optim.targets import check_rank, target_linear_names

    names = target_linear_names(model, cfg.target_modules, method="SwitchLoRA")
    check_rank(model, names, cfg.rank)
    if cfg.layerwise:
        raise UserError("method.layerwise=true is not supported by switchlora (its swaps need the whole step); "
                        "set method.layerwise=false.")
    if int(cfg.adam_warm_step) < 0:
        raise UserError(f"method.adam_warm_step={cfg.adam_warm_step} must be >= 0; the papers' value is 5.")
    if cfg.switch_lora_interval < 2 * max(int(cfg.adam_warm_step), 1):
        raise UserError(f"method.switch_lora_interval={cfg.switch_lora_interval} must be at least 2 x adam_warm_step "
                        f"({2 * int(cfg.adam_warm_step)}): a vector's counterpart must thaw before it is swapped again.")
    if not cfg.switch_descent_rate > 0:
        raise UserError(f"method.switch_descent_rate={cfg.switch_descent_rate} must be > 0; the papers' value is 0.1.")
    return names


def prepare(model, cfg):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from ..optim.switchlora import POOLS, SwitchLoRALinear
    from .adapters import wrap_linears

    names = _check(model, cfg)
    seed = int(torch.randint(0, 2**31 - 1, ()))

    def make(linear, i: int):
        return SwitchLoRALinear(linear, int(cfg.rank), cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                offload=cfg.offload_candidates, seed=seed + i)

    model = wrap_linears(model, names, make)
    # DDP would broadcast the candidate pools (about twice the target weights, on the CPU: NCCL cannot send
    # them) from rank 0 before every forward. They need no sync: every rank draws the same ones (the same
    # seed) and swaps them with the same factors. They stay buffers, so checkpoints hold them.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [n for n, _ in model.named_buffers() if n.rpartition(".")[2] in POOLS])
    return model


def build_optimizer(model, cfg):
    from ..optim.switchlora import SwitchAdamW, switchlora_layers
    from ..optim.param_groups import no_decay

    if cfg.layerwise:
        _check(model, cfg)
    layers = switchlora_layers(model)
    factors = {id(p) for m in layers for p in (m.lora_A, m.lora_B)}
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in factors:
            (plain if no_decay(name, p) else decay).append(p)
    groups = [
        {"params": [m.lora_A for m in layers], "weight_decay": cfg.weight_decay, "per": "row"},
        {"params": [m.lora_B for m in layers], "weight_decay": cfg.weight_decay, "per": "col"},
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    opt = SwitchAdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                      optim_bits=cfg.optim_bits)
    for m in layers:
        opt.set_frozen(m.lora_A, m.frozen_A, 0)
        opt.set_frozen(m.lora_B, m.frozen_B, 1)
    return opt


def merge(model):
    from ..optim.switchlora import SwitchLoRALinear
    from .adapters import unwrap_linears

    return unwrap_linears(model, SwitchLoRALinear)


def loop_hooks(model, optimizer, cfg, total_steps: int, **_) -> dict:
    """after_step(step), called after optimizer step `step` (1-based): thaw, swap, reset the counterparts."""
    from ..optim.switchlora import switch_count, switchlora_layers
    from ..optim.layerwise import base_optimizer

    opt = base_optimizer(optimizer)
    layers = switchlora_layers(model)
    descend = cfg.switch_descent_rate * total_steps

    def after_step(step: int) -> None:
        for m in layers:
            m.tick()
            k = switch_count(step, m.rank, cfg.switch_lora_interval, descend, int(m.seed))
            rows, cols = m.switch(k, cfg.adam_warm_step)
            opt.reset(m.lora_B, rows, 1)   # B's columns whose A row changed
            opt.reset(m.lora_A, cols, 0)   # A's rows whose B column changed

    return {"after_step": after_step}


def state_bytes(model, cfg, element_bytes: int | None = None) -> int:
    """SwitchAdamW on `model` before prepare: two moments per trainable tensor (8-bit blockwise from 4096
    elements; bitsandbytes-style float32 below), a float32 step per dense tensor and per row of A / column
    of B, and the two 256-entry float32 quantization maps when any moment is 8-bit."""
    from ..state_bytes import BLOCKSIZE, MIN_8BIT_SIZE, QMAP_BYTES, size, target_weights
    from .adapters import trainable_dense

    targets = target_weights(model, cfg)
    r, bits = int(cfg.rank), cfg.optim_bits
    tensors = [(p.numel(), size(p, element_bytes), 1) for _, p in trainable_dense(model, list(targets))]
    for w in targets.values():
        m, k = w.shape
        tensors += [(r * k, size(w, element_bytes), r), (m * r, size(w, element_bytes), r)]

    def moments(numel: int, b: int) -> int:
        if bits == 8 and numel >= MIN_8BIT_SIZE:
            return 2 * numel + 2 * 4 * math.ceil(numel / BLOCKSIZE)
        return 2 * numel * b

    total = sum(moments(numel, b) + 4 * steps for numel, b, steps in tensors)
    if bits == 8 and any(numel >= MIN_8BIT_SIZE for numel, _, _ in tensors):
        total += QMAP_BYTES
    return total


def other_bytes(model, cfg, element_bytes: int | None = None) -> dict[str, int]:
    """Bytes SwitchLoRA keeps outside the optimizer, by where they live: the candidate pools (min(m, n)
    vectors of length n for A and of length m for B per layer; in CPU memory with offload_candidates) and
    the swap bookkeeping on the device (selected indices int64, frozen counters int32, cursor and switch
    counts int64, seed)."""
    from ..state_bytes import size, target_weights

    r = int(cfg.rank)
    pools = book = 0
    for w in target_weights(model, cfg).values():
        m, k = w.shape
        pools += min(m, k) * (m + k) * size(w, element_bytes)
        book += 2 * r * 8 + 2 * r * 4 + 2 * 8 + 2 * 8 + 8
    out = {"device": book, "cpu": 0}
    out["cpu" if cfg.offload_candidates else "device"] += pools
    return out
