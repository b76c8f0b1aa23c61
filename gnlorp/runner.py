"""One run, end to end, as a sequence of named steps:

    plan_run          check every value, derive the settings, name the run by its identity, test the outputs
    skip_if_complete  skip_complete=true and this very config already has a complete result
    build_job         the data and the model (GLUE or C4)
    apply_method      the method's model and optimizer, with the analytic state size
    start_tracking    the result record, the W&B mirror and the curves (RunTracker)
    resume            resume=true: this config's checkpoint, verified; another config's is refused
    train_and_record  the training loop, then the result file (and the merged model if asked)

Every user-fixable problem surfaces as a UserError before anything is written to results/ (run.py prints
its one sentence and exits with status 2).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import identity
from .checks import check_config, check_name_length, check_writable_folder
from .data_fingerprint import describe_change
from .data_fingerprint import digest as fingerprint_digest
from .tasks.fingerprint import task_fingerprint
from .errors import UserError
from .methods import LOW_RANK, PROJECTED  # light: method modules (peft, bitsandbytes) load only when a method is used

# torch, transformers and peft are imported only once the config and the data folder have been checked, so a
# run stopped by a bad value answers at once, not after a long startup.

EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}
EXIT_FAILED = 1  # an error during or after training (a non-finite loss: 3, a user error before it: 2)
IDENTITY_FILE = "identity.json"  # beside each checkpoint: which training settings wrote it


@dataclass
class Outcome:
    status: str            # complete | incomplete | failed | skipped
    exit_code: int
    path: Path | None
    record: dict | None


@dataclass
class Plan:
    """What plan_run decided, from the config alone."""

    cfg: DictConfig
    derived: dict
    world: int
    rank: int
    name: str                       # readable
    run_id: str                     # <name>-<hash>: the result file's and the checkpoint folder's name
    settings: dict                  # the training settings the hash covers
    resolved: dict = field(default_factory=dict)
    multirun: bool = False
    data: dict = field(default_factory=dict)  # the data's fingerprint (gnlorp/data_fingerprint.py)

    @property
    def result_path(self) -> Path:
        return Path(self.cfg.results_dir) / f"{self.run_id}.json"

    @property
    def sharded(self) -> bool:
        """FSDP2 over several processes (train.parallel=fsdp); one process never wraps."""
        return self.world > 1 and self.cfg.train.parallel == "fsdp"

    @property
    def checkpoint_path(self) -> Path:
        # sharded: a DCP folder (gnlorp/sharded_checkpoint.py)
        return Path(self.cfg.checkpoint_dir) / self.run_id / ("last.dcp" if self.sharded else "last.pt")


def run_name(cfg: DictConfig) -> str:
    """The readable part of a run's name (the files add the hash of its training settings)."""
    return identity.readable_name(cfg, cfg.method.name in LOW_RANK)


def method_config(cfg: DictConfig, derived: dict):
    from .methods import MethodConfig

    low_rank = cfg.method.name in LOW_RANK
    return MethodConfig.from_mapping(
        OmegaConf.to_container(cfg.method, resolve=True), lr=derived["lr"], weight_decay=cfg.train.weight_decay,
        optim_bits=cfg.precision.optim_bits, accumulation_steps=derived["accumulation_steps"],
        rank=cfg.rank if low_rank else None, scale=derived["scale"],
    )


# --------------------------------------------------------------------------------------- plan_run
def _check_data_dirs(cfg: DictConfig) -> None:
    """The local data folder and its files exist (cheap; the files are parsed later)."""
    if cfg.task.family == "glue":
        from .tasks.glue import check_glue_files

        check_glue_files(cfg.task.name, cfg.task.data_dir, train=cfg.task.max_train_samples != 0)
    elif cfg.task.family == "c4":
        from .tasks.c4 import c4_files, resolve_c4_dir

        data_dir = resolve_c4_dir(cfg.task.data_dir)
        if data_dir is not None:
            for split in ("train", "validation"):
                c4_files(data_dir, split)


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


def learning_rate_choice(cfg: DictConfig, derived: dict,
                         context: identity.RunContext = identity.RunContext()) -> dict:
    """{"lr", "lr_choice"}: the learning rate and how it was chosen (kept in the result's config.derived)."""
    if cfg.train.lr_choice == "selection":
        from .results import rate_from_grid

        low_rank = cfg.method.name in LOW_RANK
        key = (cfg.task.family, cfg.task.name, cfg.model.name, cfg.method.name, int(cfg.rank) if low_rank else None,
               cfg.precision.name)
        return rate_from_grid(cfg.results_dir, key, run_identity(cfg, derived, context)[2])
    source = "train.lr" if cfg.train.lr is not None else f"task.lr.{cfg.method.name}"
    return {"lr": derived["lr"], "lr_choice": {"by": source, "factor": float(cfg.train.lr_factor)}}


def run_identity(cfg: DictConfig, derived: dict, context: identity.RunContext = identity.RunContext()
                 ) -> tuple[str, str, dict, dict]:
    """(readable name, run id = name-hash, the training settings hashed, the resolved config); the context's
    default: the shared data on a CPU."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    settings = identity.training_settings(resolved, derived, uses_rank=cfg.method.name in LOW_RANK,
                                          uses_scale=cfg.method.name in PROJECTED, context=context)
    name = run_name(cfg)
    return name, f"{name}-{identity.identity_hash(settings)}", settings, resolved


def plan_run(cfg: DictConfig, multirun: bool = False) -> Plan:
    distributed_env_from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    derived = check_config(cfg, world)
    check_name_length(f"{run_name(cfg)}-{'0' * identity.HASH_CHARS}")
    check_writable_folder("results_dir", cfg.results_dir)
    check_writable_folder("checkpoint_dir", cfg.checkpoint_dir)
    _check_data_dirs(cfg)
    data = task_fingerprint(cfg.task)
    sharded = world > 1 and cfg.train.parallel == "fsdp"
    context = identity.RunContext(fingerprint_digest(data), _device_kind(cfg), sharded)
    derived = {**derived, **learning_rate_choice(cfg, derived, context)}
    name, run_id, settings, resolved = run_identity(cfg, derived, context)
    return Plan(cfg, derived, world, rank, name, run_id, settings, resolved, multirun, data)


def _device_kind(cfg: DictConfig) -> str:
    """cpu or cuda: what device=auto resolves to here (torch loads now, once the config has passed its checks)."""
    if cfg.device != "auto":
        return str(cfg.device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------- skip_if_complete
def skip_if_complete(plan: Plan, echo) -> Outcome | None:
    if not plan.cfg.skip_complete or not plan.result_path.exists():
        return None
    from .record import load_results

    for rec in load_results(plan.cfg.results_dir)[0]:
        if rec["run_name"] == plan.run_id and rec["status"] == "complete" and \
                rec.get("identity", {}).get("settings") == plan.settings:
            echo(f"{plan.run_id}: this config's complete result is at {plan.result_path}; skipped (skip_complete=true).")
            return Outcome("skipped", 0, plan.result_path, rec)
    return None


# --------------------------------------------------------------------------------------- build_job
def _device(cfg: DictConfig, local_rank: int):
    import torch

    want = str(cfg.device)
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was requested but this machine has no CUDA device; use device=cpu or device=auto.")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown (not Linux): say nothing
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _init_distributed(plan: Plan):
    if plan.world <= 1:
        return 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        from .distributed import init

        backend = "nccl" if (torch.cuda.is_available() and plan.cfg.device != "cpu") else "gloo"
        init(backend, plan.cfg.train.collective_timeout)  # a desync fails after the timeout instead of hanging
    return int(os.environ.get("LOCAL_RANK", "0"))


def build_job(plan: Plan, echo):
    import torch

    from .jobs import c4_job, glue_job

    cfg = plan.cfg
    device = _device(cfg, _init_distributed(plan))
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    autocast = getattr(torch, cfg.precision.autocast) if cfg.precision.autocast else None
    if autocast is torch.bfloat16 and device.type == "cpu" and not _cpu_has_native_bf16():
        echo("note: this CPU has no native bf16 (AVX512-BF16 or AMX); bf16 autocast measured 25-50x slower than "
             "fp32 on such a CPU: consider precision=fp32.")
    if cfg.task.family == "glue":
        job = glue_job(cfg, device, autocast)
    else:  # under FSDP only rank 0 builds the LLaMA's weights; the others get their shards from it
        job = c4_job(cfg, device, autocast, meta_model=plan.sharded and torch.distributed.get_rank() != 0)
    echo(job.description)
    if device.type == "cuda":
        job.model.to(dtype=getattr(torch, cfg.precision.cuda_param_dtype))
    if not any(p.is_meta for p in job.model.parameters()):
        job.model.to(device)
    return job, device, autocast


# --------------------------------------------------------------------------------------- apply_method
@dataclass
class Trainable:
    model: object
    method: object
    optimizer: object
    analytic_state_bytes: int
    parameters: dict
    mcfg: object = None
    skeleton: object = None  # FSDP with save_model: the model's structure on the meta device (fsdp.meta_copy)


def apply_method(plan: Plan, model, device) -> Trainable:
    from .methods import get_method
    from .models import count_parameters

    mcfg = method_config(plan.cfg, plan.derived)
    method = get_method(mcfg.name)
    analytic = method.state_bytes(model, mcfg)
    model = method.prepare(model, mcfg)
    skeleton = None
    if plan.sharded:  # before the optimizer, which must hold the sharded parameters
        from .fsdp import meta_copy, shard_from_rank0

        skeleton = meta_copy(model) if plan.cfg.save_model else None
        shard_from_rank0(model, device, bool(plan.cfg.train.fsdp_mixed_precision))
    try:
        optimizer = method.build_optimizer(model, mcfg)
    except RuntimeError as exc:  # e.g. bitsandbytes present but broken
        raise UserError(f"The optimizer for method={mcfg.name} could not be built: {exc}") from None
    return Trainable(model, method, optimizer, analytic, count_parameters(model), mcfg, skeleton)


def method_loop_hooks(trainable: Trainable, total_steps: int, loop_cfg) -> dict:
    """The method's after_step / lr_lambda for the training loop, where it has them (methods/spec.py)."""
    make = getattr(trainable.method, "loop_hooks", None)
    if make is None:
        return {}
    return make(trainable.model, trainable.optimizer, trainable.mcfg, total_steps=total_steps,
                warmup_ratio=loop_cfg.warmup_ratio, min_lr_ratio=loop_cfg.min_lr_ratio)


# --------------------------------------------------------------------------------------- resume
def _read_identity(folder: Path) -> dict | None:
    try:
        return json.loads((folder / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _same_slot(mine: dict, theirs: dict) -> bool:
    """Checkpoints of the same experiment slot (task, data subset, model, seed), whatever the method."""
    keys = ("task.name", "task.max_train_samples", "model.name", "seed")
    return all(mine.get(k) == theirs.get(k) for k in keys)


def refuse_other_configs_checkpoint(plan: Plan, echo) -> None:
    """resume=true found no checkpoint of this config: if one of another config of the same slot exists, the
    user most likely changed a setting by mistake; say which, and keep that checkpoint. In a multirun the
    other points of the sweep are such configs, so there a fresh start is the right answer."""
    root = Path(plan.cfg.checkpoint_dir)
    candidates = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        theirs = _read_identity(folder) if (folder / "last.pt").exists() and folder.name != plan.run_id else None
        if theirs and _same_slot(plan.settings, theirs["settings"]):
            keys = identity.differing_keys(plan.settings, theirs["settings"])
            candidates.append((len(keys), folder, keys, theirs))
    if not candidates:
        echo(f"resume=true but no checkpoint at {plan.checkpoint_path}: starting from scratch.")
        return
    _, folder, keys, theirs = min(candidates, key=lambda c: c[0])
    if plan.multirun:
        echo(f"resume=true: no checkpoint of this sweep point; starting it from scratch ({folder} is another point's).")
        return
    if keys == ["data"]:
        raise UserError(
            f"resume=true, but the checkpoint {folder / 'last.pt'} was trained on other data: in task.data_dir "
            f"{describe_change(plan.data, theirs.get('data'))}; it was kept: point task.data_dir at the data it "
            f"was trained on to continue it, or drop resume=true to start on this data from scratch.")
    raise UserError(
        f"resume=true, but the checkpoint {folder / 'last.pt'} was written with other training settings "
        f"({identity.describe_differences(plan.settings, theirs['settings'], keys)}); it was kept: rerun with its "
        f"settings to continue it, or drop resume=true to start this config from scratch.")


def check_resume(plan: Plan, echo) -> bool:
    """resume=true: whether this config's checkpoint exists (light: reads identity files, not checkpoints)."""
    if not plan.cfg.resume:
        return False
    if not plan.checkpoint_path.exists():
        refuse_other_configs_checkpoint(plan, echo if plan.rank == 0 else (lambda *_: None))
        return False
    theirs = (_read_identity(plan.checkpoint_path.parent) or {}).get("settings")
    if theirs is not None and theirs != plan.settings:
        keys = identity.differing_keys(plan.settings, theirs)
        raise UserError(f"resume=true, but {plan.checkpoint_path} holds a run with other training settings "
                        f"({identity.describe_differences(plan.settings, theirs, keys)}); it was kept.")
    return True


def load_resume_state(plan: Plan, device, model=None) -> dict:
    from .checkpoint import load_checkpoint

    if plan.sharded:  # loads the model's shards in place; returns this rank's state
        from .sharded_checkpoint import load_sharded

        state = load_sharded(plan.checkpoint_path, model)
    else:
        state = load_checkpoint(plan.checkpoint_path, device)
    theirs = state.get("extra", {}).get("identity", {}).get("settings")
    if theirs != plan.settings:
        keys = identity.differing_keys(plan.settings, theirs or {})
        raise UserError(f"resume=true, but {plan.checkpoint_path} holds a run with other training settings "
                        f"({identity.describe_differences(plan.settings, theirs or {}, keys)}); it was kept.")
    return state


def write_identity(plan: Plan) -> None:
    if plan.rank != 0:
        return
    from .record import atomic_write_json

    folder = plan.checkpoint_path.parent
    atomic_write_json(folder / IDENTITY_FILE, {"run_id": plan.run_id, "settings": plan.settings, "data": plan.data})


# --------------------------------------------------------------------------------------- the run
def run(cfg: DictConfig, echo=print, multirun: bool = False) -> Outcome:
    plan = plan_run(cfg, multirun)
    skipped = skip_if_complete(plan, echo)
    if skipped:
        return skipped
    resuming = check_resume(plan, echo)

    job, device, autocast = build_job(plan, echo)
    trainable = apply_method(plan, job.model, device)
    resume_state = load_resume_state(plan, device, trainable.model) if resuming else None
    wandb_id = (resume_state or {}).get("extra", {}).get("wandb_id")
    tracker, loop, total_steps, steps_per_epoch = start_tracking(plan, job, trainable, device, autocast, wandb_id, echo)
    if resume_state is not None:
        loop.load_state_dict(resume_state)
        tracker.load_state_dict(resume_state["extra"])
        tracker.record.add_note(f"resumed from {plan.checkpoint_path} at step {loop.pos.step}")
        echo(f"Resumed from {plan.checkpoint_path} at step {loop.pos.step} of {total_steps}.")
        del resume_state
    write_identity(plan)
    outcome = train_and_record(plan, loop, tracker, trainable, device, total_steps, steps_per_epoch, echo)
    _end_distributed(plan)  # not after an exception: a rank that raised alone would leave the others waiting
    return outcome


def _end_distributed(plan: Plan) -> None:
    """Every rank reaches this point before the process group goes (no rank tears it down mid-collective)."""
    if plan.world <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        from .distributed import wait_for_rank0

        wait_for_rank0()  # rank 0 may still be writing the result or the merged model
        dist.destroy_process_group()


def start_tracking(plan: Plan, job, trainable: Trainable, device, autocast, wandb_id, echo):
    from .record import RunRecord
    from .tracker import RunTracker
    from .train import LoopConfig, TrainLoop
    from .train import steps_per_epoch as train_steps_per_epoch
    from .wandb_log import WandbLogger

    cfg, derived = plan.cfg, plan.derived
    steps_per_epoch = train_steps_per_epoch(job.data, cfg.train.batch_size)
    if steps_per_epoch < 1:
        raise UserError(f"The training data has {job.data.num_examples} examples, fewer than one batch of "
                        f"train.batch_size={cfg.train.batch_size}; lower the batch size or use more data.")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    resolved = dict(plan.resolved)
    resolved["derived"] = {**derived, "total_steps": total_steps, "world_size": plan.world, "device": str(device),
                           "steps_per_epoch": steps_per_epoch}
    record = RunRecord(cfg.results_dir, plan.run_id, resolved)
    record.set_identity(hash=plan.run_id.rsplit("-", 1)[1], settings=plan.settings,
                        config_hash=identity.config_hash(plan.resolved), data=plan.data)
    if job.baseline:
        record.set_baseline(job.baseline)
    origin = _hydra_origin()
    record.set_origin(sweep=origin["sweep"], experiment=origin["experiment"])
    logger = None
    if plan.rank == 0:
        where, group = _hydra_output_and_group(cfg)
        logger = WandbLogger(cfg.logger.mode, cfg.logger.project, plan.run_id, resolved, dir=where,
                             entity=cfg.logger.entity, resume_id=wandb_id, echo=echo, run_id=_wandb_id(plan.run_id),
                             group=group, tags=_wandb_tags(plan))
    progress = bool(cfg.train.progress) and plan.rank == 0
    tracker = RunTracker(record, main_split=job.main_split, main_metric=job.main_metric,
                         higher_is_better=job.higher_is_better, total_steps=total_steps,
                         log_every=cfg.train.log_every, progress=bool(cfg.train.progress), logger=logger, echo=echo)
    ddp_model = None
    if plan.world > 1 and not plan.sharded:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(trainable.model, device_ids=[device.index] if device.type == "cuda" else None)
    loop_cfg = LoopConfig(
        total_steps=total_steps, batch_size=cfg.train.batch_size, micro_batch_size=derived["micro_batch_size"],
        seed=cfg.seed, warmup_ratio=cfg.train.warmup_ratio, min_lr_ratio=cfg.train.min_lr_ratio,
        grad_clip=cfg.train.grad_clip, eval_every=cfg.train.eval_every,
        eval_at_epoch_end=job.eval_at_epoch_end and not cfg.train.eval_every, log_every=cfg.train.log_every,
        checkpoint_every=cfg.train.checkpoint_every, stop_at_step=cfg.train.stop_at_step,
        on_nonfinite=cfg.train.on_nonfinite, autocast=autocast, progress=progress,
    )

    def extra_state() -> dict:
        return {**tracker.state_dict(), "identity": {"run_id": plan.run_id, "settings": plan.settings}}

    hooks = method_loop_hooks(trainable, total_steps, loop_cfg)
    loop = TrainLoop(trainable.model, trainable.optimizer, job.data, loop_cfg, job.evaluate, tracker.on_log,
                     tracker.on_eval, plan.checkpoint_path, device, extra_state, plan.world, plan.rank, ddp_model,
                     **hooks)
    tracker.train_seconds = lambda: loop.pos.train_seconds
    return tracker, loop, total_steps, steps_per_epoch


def _hydra_origin() -> dict:
    """{"sweep": the sweep file's name (-cn) or None, "experiment": the experiment or None, "output_dir": the job's
    Hydra output folder or None}: where the run came from (kept in the result as `origin`)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            experiment = hc.runtime.choices.get("experiment")
            return {"sweep": hc.job.config_name if hc.job.config_name not in (None, "config") else None,
                    "experiment": experiment if experiment not in (None, "null") else None,
                    "output_dir": hc.runtime.output_dir}
    except (ImportError, ValueError):
        pass
    return {"sweep": None, "experiment": None, "output_dir": None}


def _hydra_output_and_group(cfg) -> tuple[str, str]:
    """W&B's folder sits with the job's Hydra outputs (outputs/<date>/<time>/, multirun/.../<job>/); its group is
    the sweep file's name (-cn), else the experiment, else <task>-<model>."""
    origin = _hydra_origin()
    group = origin["sweep"] or origin["experiment"] or f"{cfg.task.name}-{cfg.model.name}"
    return origin["output_dir"] or str(Path.cwd()), group


def _wandb_id(run_id: str) -> str:
    """W&B ids are short: a digest of the run id (name and identity hash), the same for a rerun or a resume."""
    import hashlib

    return hashlib.sha256(run_id.encode()).hexdigest()[:16]


def _wandb_tags(plan: Plan) -> list[str]:
    cfg = plan.cfg
    tags = [f"method:{cfg.method.name}", f"task:{cfg.task.name}", f"model:{cfg.model.name}",
            f"precision:{cfg.precision.name}", f"seed:{cfg.seed}"]
    return tags + ([f"rank:{cfg.rank}"] if "rank" in plan.settings else [])


def train_and_record(plan: Plan, loop, tracker, trainable: Trainable, device, total_steps: int,
                     steps_per_epoch: int, echo) -> Outcome:
    from .state_bytes import optimizer_state_bytes
    from .optim.projector import NonFiniteGradientError, SVDFailedError
    from .sysinfo import PeakMemory
    from .train import Interrupted, NonFiniteError

    cfg, record = plan.cfg, tracker.record
    peak = PeakMemory(device)
    peak.reset()
    status, exit_code = "complete", 0
    try:
        with _log_above_the_progress_bar(loop.cfg.progress):
            loop.run()
        if cfg.keep_checkpoint:
            loop.save_checkpoint()
        if cfg.save_model:  # before the result says complete: a merge that fails makes the run fail
            _save_merged_model(plan, trainable, echo)
    except Interrupted as stop:
        status = "incomplete"
        exit_code = EXIT_INTERRUPTED.get(stop.reason.removeprefix("received "), 0)
        echo(f"Stopped at step {stop.step} ({stop.reason}); checkpoint at {plan.checkpoint_path}. "
             f"Continue with the same command plus resume=true.")
    except (NonFiniteError, NonFiniteGradientError, SVDFailedError) as exc:
        status, exit_code = "failed", 3
        message = str(exc) if isinstance(exc, NonFiniteError) else f"Training stopped at step {loop.pos.step + 1}: {exc}"
        record.add_note(message)
        echo(f"error: {message}")
    except Exception as exc:  # anything else, during training or after it (evaluation, merge): the run failed
        status, exit_code = "failed", EXIT_FAILED
        message = f"the run failed at step {loop.pos.step} of {total_steps}: {_error_line(exc)}"
        record.add_note(message)
        if isinstance(exc, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # the command line prints a UserError's line
        echo(f"error: {message}")
        if plan.world > 1:
            raise SystemExit(exit_code) from None  # this process ends (after the finally below); torchrun stops the rest
    finally:
        if status == "complete" and loop.pos.step < total_steps:
            status = "failed"  # an exception that is not an Exception (SystemExit, ...) is propagating
        pos = loop.pos
        record.set_train(
            steps=pos.step, total_steps=total_steps, epochs=pos.epoch + pos.batch / steps_per_epoch,
            tokens=pos.tokens, wall_seconds=round(pos.train_seconds, 3),
            tokens_per_second=pos.tokens / pos.train_seconds if pos.train_seconds else None,
            nonfinite_skipped_steps=pos.skipped, accumulation_steps=plan.derived["accumulation_steps"],
            **(loop.data_stats() if plan.world == 1 or status == "complete" else {}),
        )
        record.set_memory(
            **peak.snapshot(), optimizer_state_bytes=optimizer_state_bytes(trainable.optimizer),
            optimizer_state_bytes_analytic=trainable.analytic_state_bytes, parameters=trainable.parameters,
        )
        try:
            if plan.rank == 0:
                record.write(status)
                echo(f"Result ({status}): {record.written_to}")
                if record.written_to != record.path:
                    echo(f"The complete result of this config at {record.path} was kept.")
        finally:
            tracker.finish(exit_code)

    if status == "complete" and not cfg.keep_checkpoint and plan.rank == 0:
        _remove_checkpoint(plan)  # only once the result is safely written; sweeps would pile up GBs of them
    return Outcome(status, exit_code, record.written_to, record.to_dict())


def _save_merged_model(plan: Plan, trainable: Trainable, echo) -> None:
    model = trainable.model
    if plan.sharded:  # gather the shards (every rank), rank 0 writes a vanilla model
        from .fsdp import full_state_dict, unsharded_model

        full = full_state_dict(model)
        model = unsharded_model(trainable.skeleton, full) if plan.rank == 0 else None
    if plan.rank == 0:
        out = Path(plan.cfg.results_dir) / "models" / plan.run_id
        trainable.method.merge(model).save_pretrained(out)
        echo(f"Merged model saved to {out}")


def _error_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, UserError):
        return lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]} (HYDRA_FULL_ERROR=1 shows the traceback)" if lines else type(exc).__name__


def _log_above_the_progress_bar(progress: bool):
    from contextlib import nullcontext

    if not progress:
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _remove_checkpoint(plan: Plan) -> None:
    from .checkpoint import sidecar_path

    folder = plan.checkpoint_path.parent
    if plan.checkpoint_path.is_dir():  # a DCP folder
        import shutil

        shutil.rmtree(plan.checkpoint_path, ignore_errors=True)
    for leftover in (plan.checkpoint_path, sidecar_path(plan.checkpoint_path), folder / IDENTITY_FILE):
        leftover.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something else lives there (a sidecar of a newer checkpoint format, a user's file): keep it
