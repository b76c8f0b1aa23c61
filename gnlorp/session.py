"""start_session: the result record, its W&B mirror and the curves (RunTracker), and the training loop that
feeds them; with the Hydra metadata a result keeps (origin) and W&B's id, group and tags."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import identity
from .checkpointer import Checkpointer
from .errors import UserError
from .handover import PlacedJob, Trainable
from .planning import Plan


@dataclass
class Session:
    """What trains and what records it: the loop, the tracker (record + W&B), and the run's facts."""

    loop: object      # gnlorp.train.TrainLoop
    tracker: object   # gnlorp.tracker.RunTracker
    device: object
    total_steps: int
    steps_per_epoch: int
    checkpointer: Checkpointer

    @property
    def record(self):
        return self.tracker.record

    def restore(self, state: dict, echo) -> None:
        """resume=true: the loaded checkpoint's state back into the loop and the tracker."""
        self.checkpointer.restore(state, self.loop, self.tracker)
        path = self.checkpointer.path
        self.record.add_note(f"resumed from {path} at step {self.loop.pos.step}")
        echo(f"Resumed from {path} at step {self.loop.pos.step} of {self.total_steps}.")


def method_loop_hooks(trainable: Trainable, total_steps: int, loop_cfg) -> dict:
    """The method's after_step / lr_lambda for the training loop, where it has them (methods/spec.py)."""
    from .methods import optional_hook

    make = optional_hook(trainable.method, "loop_hooks")
    if make is None:
        return {}
    return make(trainable.model, trainable.optimizer, trainable.mcfg, total_steps=total_steps,
                warmup_ratio=loop_cfg.warmup_ratio, min_lr_ratio=loop_cfg.min_lr_ratio)


def start_session(plan: Plan, placed: PlacedJob, trainable: Trainable, *, wandb_id: str | None, echo) -> Session:
    from .record import RunRecord
    from .tracker import RunTracker
    from .train import LoopConfig, TrainLoop
    from .train import steps_per_epoch as train_steps_per_epoch
    from .wandb_log import WandbLogger

    cfg, job, device = plan.cfg, placed.job, placed.device
    steps_per_epoch = train_steps_per_epoch(job.data, cfg.train.batch_size)
    if steps_per_epoch < 1:
        raise UserError(f"The training data has {job.data.num_examples} examples, fewer than one batch of "
                        f"train.batch_size={cfg.train.batch_size}; lower the batch size or use more data.")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    resolved = {**plan.resolved, "derived": plan.derived.as_dict(
        total_steps=total_steps, world_size=plan.world, device=str(device), steps_per_epoch=steps_per_epoch)}
    record = RunRecord(cfg.results_dir, plan.run_id, resolved)
    record.set_identity(hash=plan.run_id.rsplit("-", 1)[1], settings=plan.settings,
                        config_hash=identity.config_hash(plan.resolved), data=plan.data)
    if job.baseline:
        record.set_baseline(job.baseline)
    origin = hydra_origin()
    record.set_origin(sweep=origin["sweep"], experiment=origin["experiment"])
    logger = None
    if plan.rank == 0:
        where, group = _hydra_output_and_group(cfg)
        logger = WandbLogger(cfg.logger.mode, cfg.logger.project, plan.run_id, resolved, dir=where,
                             entity=cfg.logger.entity, resume_id=wandb_id, echo=echo, run_id=wandb_run_id(plan.run_id),
                             group=group, tags=_wandb_tags(plan), job_type=JOB_TYPE.get(cfg.task.family))
    tracker = RunTracker(record, main_split=job.main_split, main_metric=job.main_metric,
                         higher_is_better=job.higher_is_better, total_steps=total_steps,
                         log_every=cfg.train.log_every, progress=bool(cfg.train.progress), logger=logger, echo=echo)
    ddp_model = None
    if plan.world > 1 and not plan.sharded:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(trainable.model, device_ids=[device.index] if device.type == "cuda" else None)
    loop_cfg = LoopConfig(
        total_steps=total_steps, batch_size=cfg.train.batch_size, micro_batch_size=plan.derived.micro_batch_size,
        seed=cfg.seed, warmup_ratio=cfg.train.warmup_ratio, min_lr_ratio=cfg.train.min_lr_ratio,
        grad_clip=cfg.train.grad_clip, eval_every=cfg.train.eval_every,
        eval_at_epoch_end=job.eval_at_epoch_end and not cfg.train.eval_every, log_every=cfg.train.log_every,
        checkpoint_every=cfg.train.checkpoint_every, stop_at_step=cfg.train.stop_at_step,
        on_nonfinite=cfg.train.on_nonfinite, autocast=placed.autocast, progress=bool(cfg.train.progress) and plan.rank == 0,
    )
    checkpointer = plan.checkpointer()

    def extra_state() -> dict:  # the tracker's state and the stamp a load verifies ride in the loop's state
        return {**tracker.state_dict(), "identity": checkpointer.stamp()}

    hooks = method_loop_hooks(trainable, total_steps, loop_cfg)
    loop = TrainLoop(trainable.model, trainable.optimizer, job.data, loop_cfg, evaluate=tracker.timed(job.evaluate),
                     on_log=tracker.on_log, on_eval=tracker.on_eval, device=device, checkpointer=checkpointer,
                     extra_state=extra_state, world_size=plan.world, rank=plan.rank, ddp_model=ddp_model, **hooks)
    tracker.train_seconds = lambda: loop.pos.train_seconds
    return Session(loop=loop, tracker=tracker, device=device, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                   checkpointer=checkpointer)


def hydra_origin() -> dict:
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
    origin = hydra_origin()
    group = origin["sweep"] or origin["experiment"] or f"{cfg.task.name}-{cfg.model.name}"
    return origin["output_dir"] or str(Path.cwd()), group


JOB_TYPE = {"c4": "pretrain", "glue": "finetune"}  # W&B's job_type, by task family


def wandb_run_id(run_id: str) -> str:
    """A fresh W&B id for a run that starts from scratch: a digest of the run id (name and identity hash), which
    W&B's filters can match, and a random part, so that a rerun of a complete config is a new W&B run in the same
    group (W&B would drop a second step 1..N logged into the old one). A resume passes the id its checkpoint
    holds (resume_id) and continues that run."""
    import secrets

    return f"{hashlib.sha256(run_id.encode()).hexdigest()[:12]}-{secrets.token_hex(3)}"


def _wandb_tags(plan: Plan) -> list[str]:
    cfg = plan.cfg
    tags = [f"method:{cfg.method.name}", f"task:{cfg.task.name}", f"model:{cfg.model.name}",
            f"precision:{cfg.precision.name}", f"seed:{cfg.seed}"]
    return tags + ([f"rank:{cfg.rank}"] if "rank" in plan.settings else [])
