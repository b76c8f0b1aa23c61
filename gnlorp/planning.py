"""plan_run: from the config alone, check every value, derive the settings once (`Derived`), name the run by its
identity once (`RunIdentity`) and test the output folders. Nothing heavy loads here before the checks pass: torch
only to resolve device=auto, once every value has been checked."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import identity
from .checkpointer import Checkpointer, checkpoint_path
from .checks import check_config, check_name_length, check_writable_folder
from .data_fingerprint import digest as fingerprint_digest
from .errors import UserError
from .methods import LOW_RANK, PROJECTED  # light: method modules (peft, bitsandbytes) load only when a method is used
from .tasks.fingerprint import task_fingerprint


@dataclass(frozen=True)
class Derived:
    """The settings derived from the config (the result keeps them as config.derived, with the run's facts)."""

    lr: float
    scale: float
    micro_batch_size: int
    accumulation_steps: int
    lr_choice: dict = field(default_factory=dict, hash=False)  # how the rate was chosen

    def __getitem__(self, key: str):  # read by key like check_config's dict (identity, method_config, tests)
        return getattr(self, key)

    def as_dict(self, **facts) -> dict:
        """The result's config.derived: these settings plus the run's facts (total_steps, world_size, ...)."""
        return {**asdict(self), **facts}


@dataclass(frozen=True)
class RunIdentity:
    name: str        # readable
    run_id: str      # <name>-<hash>: the result file's and the checkpoint folder's name
    settings: dict   # the training settings the hash covers
    resolved: dict   # the resolved config


@dataclass
class Plan:
    """What plan_run decided, from the config alone."""

    cfg: DictConfig
    derived: Derived
    world: int
    rank: int
    identity: RunIdentity
    multirun: bool = False
    data: dict = field(default_factory=dict)  # the data's fingerprint (gnlorp/data_fingerprint.py)
    started: float = field(default_factory=time.monotonic)  # the run's clock: total_seconds includes loading

    name = property(lambda self: self.identity.name)
    run_id = property(lambda self: self.identity.run_id)
    settings = property(lambda self: self.identity.settings)
    resolved = property(lambda self: self.identity.resolved)

    @property
    def result_path(self) -> Path:
        return Path(self.cfg.results_dir) / f"{self.run_id}.json"

    @property
    def sharded(self) -> bool:
        """FSDP2 over several processes (train.parallel=fsdp); one process never wraps."""
        return self.world > 1 and self.cfg.train.parallel == "fsdp"

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.cfg.checkpoint_dir, self.run_id, self.sharded)

    def checkpointer(self) -> Checkpointer:
        return Checkpointer(self.checkpoint_path, self.run_id, self.settings, self.data, rank=self.rank,
                            sharded=self.sharded, multirun=self.multirun)


def run_name(cfg: DictConfig) -> str:
    """The readable part of a run's name (the files add the hash of its training settings)."""
    return identity.readable_name(cfg, cfg.method.name in LOW_RANK)


def method_config(cfg: DictConfig, derived):
    from .methods import MethodConfig

    low_rank = cfg.method.name in LOW_RANK
    return MethodConfig.from_mapping(
        OmegaConf.to_container(cfg.method, resolve=True), lr=derived["lr"], weight_decay=cfg.train.weight_decay,
        optim_bits=cfg.precision.optim_bits,
        optim_library=cfg.precision.optim_library, accumulation_steps=derived["accumulation_steps"],
        rank=cfg.rank if low_rank else None, scale=derived["scale"],
    )


def distributed_env_from_slurm() -> None:
    """Under SLURM without torchrun (hydra/launcher=slurm: one task per GPU), set RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT from SLURM's environment with submitit, as torchrun would have."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        raise UserError("a SLURM job of several tasks needs submitit to set up torch.distributed; "
                        "pip install 'gnlorp[slurm]', or start the processes with torchrun.") from None
    os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def run_identity(cfg: DictConfig, derived, context: identity.RunContext = identity.RunContext()) -> RunIdentity:
    """The run's names and the training settings its hash covers; the context's default: the shared data on a CPU."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    settings = identity.training_settings(resolved, derived, uses_rank=cfg.method.name in LOW_RANK,
                                          uses_scale=cfg.method.name in PROJECTED, context=context)
    return _named(cfg, settings, resolved)


def _named(cfg: DictConfig, settings: dict, resolved: dict) -> RunIdentity:
    name = run_name(cfg)
    return RunIdentity(name, f"{name}-{identity.identity_hash(settings)}", settings, resolved)


def learning_rate_choice(cfg: DictConfig, derived, context: identity.RunContext = identity.RunContext(),
                         settings: dict | None = None) -> dict:
    """{"lr", "lr_choice"}: the learning rate and how it was chosen (kept in the result's config.derived);
    `settings`: the run's training settings where already computed (selection compares all but the rate)."""
    if cfg.train.lr_choice == "selection":
        from .results import rate_from_grid

        low_rank = cfg.method.name in LOW_RANK
        key = (cfg.task.family, cfg.task.name, cfg.model.name, cfg.method.name, int(cfg.rank) if low_rank else None,
               cfg.precision.name)
        return rate_from_grid(cfg.results_dir, key, settings or run_identity(cfg, derived, context).settings)
    source = "train.lr" if cfg.train.lr is not None else f"task.lr.{cfg.method.name}"
    return {"lr": derived["lr"], "lr_choice": {"by": source, "factor": float(cfg.train.lr_factor)}}


def plan_run(cfg: DictConfig, multirun: bool = False) -> Plan:
    distributed_env_from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    checked = check_config(cfg, world)
    check_name_length(f"{run_name(cfg)}-{'0' * identity.HASH_CHARS}")
    check_writable_folder("results_dir", cfg.results_dir)
    check_writable_folder("checkpoint_dir", cfg.checkpoint_dir)
    data = task_fingerprint(cfg.task)  # lists and checks the data files too
    context = identity.RunContext(fingerprint_digest(data), _device_kind(cfg), world > 1 and cfg.train.parallel == "fsdp")
    # the identity, once: the settings at the config's rate; a rate chosen by selection replaces only train.lr
    ident = run_identity(cfg, checked, context)
    choice = learning_rate_choice(cfg, checked, context, ident.settings)
    derived = Derived(**{**checked, **choice})
    if cfg.train.lr_choice == "selection":
        ident = _named(cfg, {**ident.settings, "train.lr": derived.lr}, ident.resolved)
    return Plan(cfg=cfg, derived=derived, world=world, rank=rank, identity=ident, multirun=multirun, data=data)


def _device_kind(cfg: DictConfig) -> str:
    """cpu or cuda: what device=auto resolves to here (torch loads now, once the config has passed its checks)."""
    if cfg.device != "auto":
        return str(cfg.device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
