"""The process group of a run over several processes, and its two kinds of wait.

The training collectives (gradient reduction, FSDP's gathers) fail after `train.collective_timeout`, so a desync
ends the run in a minute instead of hanging. Some phases are rank 0's alone while the others wait: its evaluation
under DDP, a checkpoint or the result it writes, the weights it builds for FSDP to shard, the merged model it
saves. Those waits go through `wait_for_rank0`, a barrier on a gloo group of its own whose timeout is RANK0_WAIT.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

RANK0_WAIT = timedelta(hours=3)
_rank0_group = None


def init(backend: str, collective_timeout_s: float) -> None:
    global _rank0_group
    dist.init_process_group(backend, timeout=timedelta(seconds=collective_timeout_s))
    _rank0_group = dist.new_group(backend="gloo", timeout=RANK0_WAIT)  # every process creates it, in this order


def wait_for_rank0() -> None:
    """Every process waits here until all arrive, rank 0 after its work alone (a no-op on one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier(group=_rank0_group)
