"""One run, end to end, as a sequence of named steps, each handing the next one typed object:

    plan_run          check every value, derive the settings, name the run by its identity, test the outputs -> Plan
                      (gnlorp/planning.py)
    skip_if_complete  skip_complete=true and this very config already has a complete result -> Outcome or None
    check_resume      resume=true: this config's checkpoint exists; another config's is refused (gnlorp/checkpointer.py)
    build_job         the data and the model (GLUE or C4) on their device -> PlacedJob
    apply_method      the method's model and optimizer, with the analytic state size -> Trainable
    start_session     the result record, the W&B mirror, the curves and the training loop -> Session
                      (gnlorp/session.py); resume=true: the checkpoint, verified, back into the loop and the tracker
    train_and_record  the training loop, then the result file (and the merged model if asked) -> Outcome
                      (gnlorp/outcome.py)

Every user-fixable problem surfaces as a UserError before anything is written to results/ (run.py prints
its one sentence and exits with status 2).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from omegaconf import DictConfig

from .checks import check_config  # noqa: F401  (tests and callers import it from here)
from .errors import UserError
from .handover import Outcome, PlacedJob, Trainable
from .planning import (  # noqa: F401  (the plan step's parts, importable from here)
    Plan, distributed_env_from_slurm, learning_rate_choice, method_config, plan_run, run_identity, run_name,
)

# torch, transformers and peft are imported only once the config and the data folder have been checked (inside the
# steps below), so a run stopped by a bad value answers at once, not after a long startup.


def run(cfg: DictConfig, echo=print, multirun: bool = False) -> Outcome:
    plan = plan_run(cfg, multirun)
    skipped = skip_if_complete(plan, echo)
    if skipped:
        return skipped
    checkpointer = plan.checkpointer()
    resuming = checkpointer.check_resume(bool(cfg.resume), echo)

    from .outcome import train_and_record
    from .session import start_session

    placed = build_job(plan, echo)
    trainable = apply_method(plan, placed)
    resume_state = checkpointer.load(placed.device, trainable.model) if resuming else None
    wandb_id = (resume_state or {}).get("extra", {}).get("wandb_id")
    session = start_session(plan, placed, trainable, wandb_id=wandb_id, echo=echo)
    if resume_state is not None:
        session.restore(resume_state, echo)
        del resume_state
    checkpointer.write_identity()
    outcome = train_and_record(plan, session, trainable, echo)
    _end_distributed(plan)  # not after an exception: a rank that raised alone would leave the others waiting
    return outcome


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


def build_job(plan: Plan, echo) -> PlacedJob:
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
    return PlacedJob(job=job, device=device, autocast=autocast)


# --------------------------------------------------------------------------------------- apply_method
def apply_method(plan: Plan, placed: PlacedJob) -> Trainable:
    from .methods import get_method
    from .models import count_parameters

    mcfg = method_config(plan.cfg, plan.derived)
    method = get_method(mcfg.name)
    model = placed.job.model
    analytic = method.state_bytes(model, mcfg)
    model = method.prepare(model, mcfg)
    skeleton = None
    if plan.sharded:  # before the optimizer, which must hold the sharded parameters
        from .fsdp import meta_copy, shard_from_rank0

        skeleton = meta_copy(model) if plan.cfg.save_model else None
        shard_from_rank0(model, placed.device, bool(plan.cfg.train.fsdp_mixed_precision))
    try:
        optimizer = method.build_optimizer(model, mcfg)
    except RuntimeError as exc:  # e.g. bitsandbytes present but broken
        raise UserError(f"The optimizer for method={mcfg.name} could not be built: {exc}") from None
    return Trainable(model=model, method=method, optimizer=optimizer, analytic_state_bytes=analytic,
                     parameters=count_parameters(model), mcfg=mcfg, skeleton=skeleton)


# --------------------------------------------------------------------------------------- the end
def _end_distributed(plan: Plan) -> None:
    """Every rank reaches this point before the process group goes (no rank tears it down mid-collective)."""
    if plan.world <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        from .distributed import wait_for_rank0

        wait_for_rank0()  # rank 0 may still be writing the result or the merged model
        dist.destroy_process_group()
