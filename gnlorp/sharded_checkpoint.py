"""Sharded checkpoints of an FSDP2 run (train.parallel=fsdp): a folder written by torch.distributed.checkpoint.

Layout of `<run>/last.dcp/`:
  .metadata, __<rank>_0.distcp    DCP's files: the model as DTensors (each rank writes its shards), and per
                                  rank `rank<r>`: that rank's optimizer state (its shards: moments, 8-bit
                                  block scales; the projectors), scheduler, position, RNG, data-stream state
  MANIFEST.sha256                 sha256sum-format digests of every other file, written last by rank 0

DCP's metadata records what each file should hold, not whether its bytes are intact, so the manifest keeps
checkpoint.py's promise: a load verifies every listed file (and that the folder holds no other) before DCP
reads a byte; a mismatch is a UserError and nothing is deleted. A save writes `last.dcp.tmp` and only once
its manifest is written swaps it in (old folder renamed aside, new renamed in, old removed), so an
interrupted save leaves the previous checkpoint loadable.

The optimizer state is per rank (each rank's shards, as GaLoreAdamW lays them out for this world size), so
a resume needs the same number of processes; the model alone could be resharded.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import CheckpointSaveError, file_sha256
from .errors import UserError, os_error_cause

MANIFEST = "MANIFEST.sha256"


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name != MANIFEST)


def _write_manifest(folder: Path) -> None:
    lines = "".join(f"{file_sha256(f)}  {f.name}\n" for f in _files(folder))
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(lines, encoding="ascii")
    tmp.replace(folder / MANIFEST)


def verify(folder: Path) -> None:
    """Every file of the checkpoint folder matches the manifest; else a UserError (the folder is kept)."""
    try:
        lines = (folder / MANIFEST).read_text(encoding="ascii").splitlines()
        listed = dict(reversed(line.split("  ", 1)) for line in lines)
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"The checkpoint {folder} has no readable {MANIFEST}, so it cannot be verified; it was kept: "
                        "start over without resume=true.") from None
    present = {f.name for f in _files(folder)}
    if present != set(listed):
        raise UserError(f"The checkpoint {folder} holds files {sorted(present ^ set(listed))} that its manifest does "
                        "not match; it was kept: start over without resume=true.")
    for name, digest in listed.items():
        if file_sha256(folder / name) != digest:
            raise UserError(f"The checkpoint file {folder / name} does not match its SHA-256 in {MANIFEST} (it was "
                            "changed or damaged); it was kept: start over without resume=true.")


def _model_state(model: nn.Module) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model)


def _bytes(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def save_sharded(folder: Path, model: nn.Module, rank_state: dict) -> None:
    """Write the checkpoint (collective: every rank calls it with its own `rank_state`)."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    rank = dist.get_rank()
    tmp = folder.with_name(f"{folder.name}.tmp")
    error = None
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        dcp.save({"model": _model_state(model), f"rank{rank}": _bytes(rank_state)}, checkpoint_id=str(tmp))
        dist.barrier()
        if rank == 0:
            _write_manifest(tmp)
            old = folder.with_name(f"{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        error = exc
    finally:
        dist.barrier()
    if error is not None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        cause, fix = os_error_cause(error, "checkpoint_dir")
        raise CheckpointSaveError(f"The checkpoint {folder} could not be written ({cause}); the previous one, if any, "
                                  f"is intact: {fix}.")


def load_sharded(folder: Path, model: nn.Module) -> dict:
    """Verify the folder, load the model's shards into `model` in place, return this rank's state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    folder = Path(folder)
    verify(folder)
    rank, world = dist.get_rank(), dist.get_world_size()
    key = f"rank{rank}"
    keys = set(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    saved_world = sum(1 for k in keys if k.startswith("rank") and k[4:].isdigit())
    if saved_world != world:
        raise UserError(f"The checkpoint {folder} was written by {saved_world} processes; resume it with "
                        f"--nproc_per_node={saved_world} (this run has {world}).")
    state = {"model": _model_state(model), key: io.BytesIO()}
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"])
    mine = state[key]
    while isinstance(mine, io.BytesIO):  # DCP hands back what was stored: the serialized rank state
        mine.seek(0)
        mine = torch.load(mine, weights_only=False)
    return mine
