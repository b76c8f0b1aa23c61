"""FSDP2 (`train.parallel=fsdp`): each transformer block and the root sharded by rows over a 1-D DeviceMesh.

Every parameter, gradient and optimizer state is split over the W processes (dim 0; see optim/sharded.py
for GaLore's projector on such shards); a block's parameters are all-gathered for its forward and again for
its backward, and its gradients reduce-scattered (averaged). The forward sees whole tensors, so every
method's forward (peft's LoRA/DoRA, GradNormLoRP's WeightNormLinear) runs unchanged.

WeightNormLinear under FSDP2: its direction V (m x n) and magnitude g (m) are both sharded on dim 0 with
the same split of the m rows, so each rank holds matching rows of V and g, and the row norms ||V||_row of a
row shard are computed from that shard alone: W's rows diag(g_i) V_i / ||V_i||_row are local.

Optimizers: torch.optim.AdamW (full, LoRA, DoRA in 32 bits) steps DTensors natively; GaLoreAdamW (GaLore,
GradNormLoRP, and every 8-bit run: bitsandbytes' AdamW8bit writes through raw pointers and does not take a
DTensor, so 8-bit full/LoRA/DoRA go through GaLoreAdamW's dense path, the same blockwise 8-bit Adam kernel)
steps each rank's shard. Layer-wise mode is refused (gnlorp.checks): its hooks would step a parameter on the
unreduced gradient.

Mixed precision (train.fsdp_mixed_precision=true, GPUs only): parameters are all-gathered and computed in
bf16, gradients reduce-scattered in float32, and the sharded master parameters and optimizer states stay
float32 (MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)).
"""

from __future__ import annotations

import copy
import itertools
import re
from contextlib import contextmanager

import torch
from torch import nn

BLOCK_LISTS = re.compile(r"(^|\.)(layers|layer|h|blocks)$")  # LLaMA model.layers, BERT encoder.layer, GPT-2 h


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the children of every ModuleList named layers/layer/h/blocks."""
    return [block for name, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and BLOCK_LISTS.search(name) for block in m]


def mixed_precision_policy(enabled: bool):
    if not enabled:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard_model(model: nn.Module, device: torch.device, mixed_precision: bool = False) -> nn.Module:
    """fully_shard every transformer block, then the root (embeddings, final norm, head), in place."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw = {"mesh": mesh}
    policy = mixed_precision_policy(mixed_precision)
    if policy is not None:
        kw["mp_policy"] = policy
    for block in transformer_blocks(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def shard_from_rank0(model: nn.Module, device: torch.device, mixed_precision: bool = False) -> nn.Module:
    """shard_model for a model whose weights are real on rank 0 and may be on the meta device on the other
    ranks (built so, they never hold the whole model: runner.build_job): after sharding, rank 0's values are
    broadcast into every rank's shards, and its buffers (LLaMA's rotary frequencies are not in the state
    dict) into everyone's. Collective: every rank calls it. Rank 0 holds the whole model until then."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from .distributed import wait_for_rank0

    wait_for_rank0()  # rank 0 may still be building the weights the others wait for
    rank0 = dist.get_rank() == 0
    whole = dict(model.state_dict()) if rank0 else {}  # references, kept alive past sharding on rank 0 only
    shard_model(model, device, mixed_precision)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model.to_empty(device=device)
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del whole
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    return model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def no_gradient_sync(model: nn.Module):
    """FSDP2's counterpart of DDP's no_sync(): gradients accumulate unsharded, unreduced."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def local_optimizer_state(optimizer) -> dict:
    """optimizer.state_dict() with every DTensor replaced by this rank's shard (a plain tensor)."""
    from .optim.sharded import local

    sd = optimizer.state_dict()
    sd["state"] = {i: {k: local(v) if torch.is_tensor(v) else v for k, v in s.items()} for i, s in sd["state"].items()}
    return sd


def restore_optimizer_state(optimizer, sd: dict) -> None:
    """Load a `local_optimizer_state` back: a tensor shaped like a DTensor parameter's shard becomes a
    DTensor again (torch.optim.AdamW keeps DTensor moments); GaLoreAdamW's sharded state stays plain."""
    from torch.distributed.tensor import DTensor

    from .optim.galore_adamw import GaLoreAdamW
    from .optim.sharded import is_sharded

    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not isinstance(optimizer, GaLoreAdamW):
        for index, state in sd["state"].items():
            p = params[index]
            if not is_sharded(p):
                continue
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape == p.to_local().shape:
                    state[key] = DTensor.from_local(value, p.device_mesh, p.placements, run_check=False,
                                                    shape=p.shape, stride=p.stride())
    optimizer.load_state_dict(sd)


def full_state_dict(model: nn.Module) -> dict:
    """The whole model's state dict on rank 0 (CPU), {} elsewhere. Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of `model` whose parameters live on the meta device (no memory): taken before
    sharding, it later receives `full_state_dict` to write a merged, vanilla Hugging Face model."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = t.detach().to("meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def unsharded_model(skeleton: nn.Module, state: dict) -> nn.Module:
    """`skeleton` (a meta_copy) materialized on the CPU with the weights of `state` (a full_state_dict)."""
    skeleton.to_empty(device="cpu")
    skeleton.load_state_dict(state)
    return skeleton
