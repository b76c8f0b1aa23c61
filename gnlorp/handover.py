"""The typed objects the runner's steps hand each other (gnlorp/runner.py), besides the Plan (gnlorp/planning.py)
and the Session (gnlorp/session.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class PlacedJob:
    """build_job's result: the job (gnlorp/jobs.py: data, model, evaluation) on its device."""

    job: object
    device: object            # torch.device
    autocast: object = None   # torch dtype for autocast, or None


@dataclass
class Trainable:
    """apply_method's result: the method's model and optimizer, with the analytic state size."""

    model: object
    method: object
    optimizer: object
    analytic_state_bytes: int
    parameters: dict
    mcfg: object = None
    skeleton: object = None  # FSDP with save_model: the model's structure on the meta device (fsdp.meta_copy)


@dataclass
class Outcome:
    status: str            # complete | incomplete | failed | skipped
    exit_code: int
    path: Path | None
    record: dict | None
