"""One run, end to end: check the config, build the job (GLUE or C4), apply the method, train, evaluate,
and record scores, memory and throughput in results/<run>.json and W&B.

Every user-fixable problem is found before anything is written to results/, and surfaces as a UserError
(run.py prints its one sentence and exits with status 2).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import UserError

from .methods import LOW_RANK  # light: method modules (peft, bitsandbytes) load only when a method is used

# torch, transformers and peft are imported only once the config and the data folder have been checked, so a
# run stopped by a bad value answers at once, not after a long startup.

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes; _dtype(name) gives the dtype
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}


@dataclass
class Outcome:
    status: str            # complete | incomplete | failed | skipped
    exit_code: int
    path: Path | None
    record: dict | None


def run_name(cfg: DictConfig) -> str:
    if cfg.name:
        return str(cfg.name)
    task = f"glue-{cfg.task.name}" if cfg.task.family == "glue" else cfg.task.name
    rank = f"-r{cfg.method.rank}" if cfg.method.name in LOW_RANK else ""
    # a run on a train subset is another experiment than one on the whole split: it gets its own result file,
    # so that skip_complete never takes one for the other (the quickstart's MRPC run vs the CPU sweep's)
    samples = cfg.task.get("max_train_samples")
    subset = f"-n{samples}" if samples else ""
    return f"{task}-{cfg.model.name}-{cfg.method.name}{rank}-{cfg.precision.name}{subset}-s{cfg.seed}"


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown (not Linux): say nothing
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --------------------------------------------------------------------------------------- checks
def _device(cfg: DictConfig, local_rank: int) -> torch.device:
    want = str(cfg.device)
    if want not in ("auto", "cpu", "cuda"):
        raise UserError(f"device={want!r} is not one of auto, cpu, cuda.")
    import torch

    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was requested but this machine has no CUDA device; use device=cpu or device=auto.")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def _learning_rate(cfg: DictConfig) -> float:
    lr = cfg.train.lr
    if lr is None:
        table = cfg.task.get("lr") or {}
        if cfg.method.name not in table:
            raise UserError(f"task {cfg.task.name!r} has no learning rate for method {cfg.method.name!r}; pass train.lr=...")
        lr = table[cfg.method.name]
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise UserError(f"train.lr={lr!r} is not a number; pass e.g. train.lr=1e-4.") from None
    if not (lr > 0 and math.isfinite(lr)):
        raise UserError(f"train.lr={lr} must be a positive number; pass e.g. train.lr=1e-4.")
    return lr


def check_config(cfg: DictConfig, world_size: int = 1) -> dict:
    """Everything that can be checked from the config alone; returns derived settings."""
    t = cfg.train
    for key in ("batch_size",):
        if not isinstance(t[key], int) or t[key] <= 0:
            raise UserError(f"train.{key}={t[key]!r} must be a positive integer.")
    micro = t.micro_batch_size or math.ceil(t.batch_size / world_size)
    if not isinstance(micro, int) or micro <= 0 or micro * world_size > t.batch_size:
        raise UserError(
            f"train.micro_batch_size={t.micro_batch_size} must be a positive integer with micro_batch_size x "
            f"{world_size} process(es) <= train.batch_size={t.batch_size}."
        )
    if t.max_steps is not None and (not isinstance(t.max_steps, int) or t.max_steps <= 0):
        raise UserError(f"train.max_steps={t.max_steps!r} must be a positive integer or null.")
    if not isinstance(t.epochs, int) or t.epochs <= 0:
        raise UserError(f"train.epochs={t.epochs!r} must be a positive integer.")
    if t.on_nonfinite not in ("stop", "skip"):
        raise UserError(f"train.on_nonfinite={t.on_nonfinite!r} must be stop or skip.")
    if cfg.logger.mode not in (None, "online", "offline", "disabled"):
        raise UserError(f"logger.mode={cfg.logger.mode!r} must be online, offline or disabled.")
    layerwise = bool(cfg.method.get("layerwise", False))
    if layerwise and t.grad_clip and t.grad_clip > 0:
        raise UserError("method.layerwise=true steps each weight inside backward, so no global gradient norm exists "
                        "to clip; set train.grad_clip=0.")
    if layerwise and world_size > 1:
        raise UserError("method.layerwise=true cannot be combined with DDP (the step would run before the gradient "
                        "all-reduce); run on one process or set method.layerwise=false.")
    if cfg.precision.optim_bits not in (8, 32):
        raise UserError(f"precision.optim_bits={cfg.precision.optim_bits} must be 8 or 32.")
    if cfg.precision.optim_bits == 8:
        try:
            import bitsandbytes.functional  # noqa: F401
        except Exception as exc:
            raise UserError(f"precision=8bit needs a working bitsandbytes >= 0.50, but importing it failed ({exc}); "
                            "pip install 'bitsandbytes>=0.50' or use precision=bf16.") from None
    for key in ("autocast", "cuda_param_dtype"):
        value = cfg.precision.get(key)
        if value is not None and value not in DTYPES:
            raise UserError(f"precision.{key}={value!r} must be one of {', '.join(DTYPES)} or null.")
    rank = cfg.method.get("rank")
    if cfg.method.name in LOW_RANK and (not isinstance(rank, int) or rank <= 0):
        raise UserError(f"rank={rank!r} is not a positive integer; choose e.g. rank=8.")
    accumulation = math.ceil(t.batch_size / (micro * world_size))
    return {"lr": _learning_rate(cfg), "micro_batch_size": micro, "accumulation_steps": accumulation}


def method_config(cfg: DictConfig, derived: dict):
    from .methods import MethodConfig

    m = OmegaConf.to_container(cfg.method, resolve=True)
    return MethodConfig.from_mapping(
        m, lr=derived["lr"], weight_decay=cfg.train.weight_decay, optim_bits=cfg.precision.optim_bits,
        accumulation_steps=derived["accumulation_steps"],
    )


# --------------------------------------------------------------------------------------- the run
def _init_distributed(cfg: DictConfig):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if (torch.cuda.is_available() and cfg.device != "cpu") else "gloo"
        dist.init_process_group(backend)
    return world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))


def _flatten(metrics: dict, prefix: str) -> dict:
    return {f"{prefix}/{split}/{k}": v for split, ms in metrics.items() for k, v in ms.items() if isinstance(v, (int, float))}


def _check_data_dirs(cfg: DictConfig) -> None:
    """The local data folder and its files exist (cheap; the files are parsed later), checked before the
    tokenizer and model are loaded."""
    if cfg.task.family == "glue":
        from .tasks.glue import check_glue_files

        check_glue_files(cfg.task.name, cfg.task.data_dir, train=cfg.task.max_train_samples != 0)
    elif cfg.task.family == "c4":
        from .tasks.c4 import c4_files, resolve_c4_dir

        data_dir = resolve_c4_dir(cfg.task.data_dir)
        if data_dir is not None:
            for split in ("train", "validation"):
                c4_files(data_dir, split)


def run(cfg: DictConfig, echo=print) -> Outcome:
    world, rank, local_rank = _init_distributed(cfg)
    derived = check_config(cfg, world)
    _check_data_dirs(cfg)
    device = _device(cfg, local_rank)

    import torch

    from .jobs import c4_job, glue_job
    from .models import count_parameters
    from .record import RunRecord
    from .sysinfo import PeakMemory
    from .train import Interrupted, LoopConfig, NonFiniteError, TrainLoop
    from .train import steps_per_epoch as train_steps_per_epoch
    from .wandb_log import WandbLogger

    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    name = run_name(cfg)
    results_dir = Path(cfg.results_dir)
    result_path = results_dir / f"{name}.json"
    if cfg.skip_complete and result_path.exists():
        from .record import load_results

        done = [r for r in load_results(results_dir)[0] if r["run_name"] == name and r["status"] == "complete"]
        if done:
            echo(f"{name}: a complete result already exists at {result_path}; skipped (skip_complete=true).")
            return Outcome("skipped", 0, result_path, done[0])

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    autocast = _dtype(cfg.precision.autocast) if cfg.precision.autocast else None
    if autocast is torch.bfloat16 and device.type == "cpu" and not _cpu_has_native_bf16():
        echo("note: this CPU has no native bf16 (AVX512-BF16 or AMX); bf16 autocast measured 25-50x slower than "
             "fp32 on such a CPU: consider precision=fp32.")
    if cfg.task.family == "glue":
        job = glue_job(cfg, device, autocast)
    elif cfg.task.family == "c4":
        job = c4_job(cfg, device, autocast)
    else:
        raise UserError(f"task.family={cfg.task.family!r} must be glue or c4.")
    echo(job.description)

    from .memory import estimate_state_bytes, optimizer_state_bytes  # imports peft: after the data has loaded
    from .methods import get_method
    from .optim.projector import NonFiniteGradientError, SVDFailedError

    model = job.model
    if device.type == "cuda":
        model.to(dtype=_dtype(cfg.precision.cuda_param_dtype))
    model.to(device)
    mcfg = method_config(cfg, derived)
    method = get_method(mcfg.name)
    analytic_state = estimate_state_bytes(model, mcfg)
    model = method.prepare(model, mcfg)
    try:
        optimizer = method.build_optimizer(model, mcfg)
    except RuntimeError as exc:  # e.g. bitsandbytes present but broken
        raise UserError(f"The optimizer for method={mcfg.name} could not be built: {exc}") from None
    params = count_parameters(model)

    steps_per_epoch = train_steps_per_epoch(job.data, cfg.train.batch_size)
    if steps_per_epoch < 1:
        raise UserError(f"The training data has {job.data.num_examples} examples, fewer than one batch of "
                        f"train.batch_size={cfg.train.batch_size}; lower the batch size or use more data.")
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["derived"] = {**derived, "total_steps": total_steps, "world_size": world, "device": str(device),
                           "steps_per_epoch": steps_per_epoch}
    record = RunRecord(results_dir, name, resolved)
    ddp_model = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    checkpoint_path = Path(cfg.checkpoint_dir) / name / "last.pt"
    resume_state = None
    if cfg.resume and checkpoint_path.exists():
        resume_state = torch.load(checkpoint_path, map_location=device, weights_only=True)
    elif cfg.resume:
        echo(f"resume=true but no checkpoint at {checkpoint_path}: starting from scratch.")

    logger = None
    if rank == 0:
        logger = WandbLogger(
            cfg.logger.mode, cfg.logger.project, name, resolved, dir=str(Path.cwd()), entity=cfg.logger.entity,
            resume_id=(resume_state or {}).get("extra", {}).get("wandb_id"), echo=echo,
        )
    best: dict = {}

    # without a progress bar (sweep logs), ten lines per run say how far it is and how fast it goes
    report_every = max(1, total_steps // 10)

    def on_log(step: int, values: dict) -> None:
        record.add_loss(step, values["loss"], values["lr"])
        if logger and (step % cfg.train.log_every == 0 or step == 1):
            logger.log({f"train/{k}": v for k, v in values.items()}, step=step)
        if not cfg.train.progress and step % report_every == 0 and step < total_steps:
            eta = (total_steps - step) * loop.pos.train_seconds / step  # train_seconds spans a resume too
            _write(f"step {step}/{total_steps}: loss {values['loss']:.4f}, "
                   f"{values['tokens_per_second']:,.0f} tokens/s, training ETA {eta / 60:.1f} min")

    def on_eval(step: int, epoch: int, metrics: dict) -> None:
        record.add_eval(step, metrics, epoch)
        value = metrics[job.main_split][job.main_metric]
        better = not best or (value > best["value"] if job.higher_is_better else value < best["value"])
        if better:
            best.update(value=value, step=step, epoch=epoch, metrics=metrics)
        record.set_best_last(
            {"step": best["step"], "epoch": best["epoch"], "metrics": best["metrics"]},
            {"step": step, "epoch": epoch, "metrics": metrics},
        )
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics[job.main_split].items() if isinstance(v, float))
        _write(f"eval step {step} (epoch {epoch}): {job.main_split} {shown}")
        if logger:
            logger.log(_flatten(metrics, "eval"), step=step)

    def _write(line: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(line) if cfg.train.progress else echo(line)

    loop_cfg = LoopConfig(
        total_steps=total_steps, batch_size=cfg.train.batch_size, micro_batch_size=derived["micro_batch_size"],
        seed=cfg.seed, warmup_ratio=cfg.train.warmup_ratio, min_lr_ratio=cfg.train.min_lr_ratio,
        grad_clip=cfg.train.grad_clip or 0.0, eval_every=cfg.train.eval_every,
        eval_at_epoch_end=job.eval_at_epoch_end and not cfg.train.eval_every, log_every=cfg.train.log_every,
        checkpoint_every=cfg.train.checkpoint_every, stop_at_step=cfg.train.stop_at_step,
        on_nonfinite=cfg.train.on_nonfinite, autocast=autocast, progress=bool(cfg.train.progress) and rank == 0,
    )

    def extra_state() -> dict:
        return {
            "loss_curve": record.loss_curve, "eval_history": record.eval_history, "best": dict(best),
            "wandb_id": logger.run_id if logger else None,
        }

    loop = TrainLoop(model, optimizer, job.data, loop_cfg, job.evaluate, on_log, on_eval,
                     checkpoint_path, device, extra_state, world, rank, ddp_model)
    if resume_state is not None:
        loop.load_state_dict(resume_state)
        extra = resume_state["extra"]
        for step, loss in extra["loss_curve"]:
            record.add_loss(step, loss)
        for e in extra["eval_history"]:
            record.add_eval(e["step"], e["metrics"], e["epoch"])
        best.update(extra["best"])
        record.add_note(f"resumed from {checkpoint_path} at step {loop.pos.step}")
        echo(f"Resumed from {checkpoint_path} at step {loop.pos.step} of {total_steps}.")
        del resume_state

    peak = PeakMemory(device)
    peak.reset()
    status, exit_code = "complete", 0

    def finish_record(status: str) -> None:
        pos = loop.pos
        record.set_train(
            steps=pos.step, total_steps=total_steps, epochs=pos.epoch + pos.batch / steps_per_epoch,
            tokens=pos.tokens, wall_seconds=round(pos.train_seconds, 3),
            tokens_per_second=pos.tokens / pos.train_seconds if pos.train_seconds else None,
            nonfinite_skipped_steps=pos.skipped, accumulation_steps=derived["accumulation_steps"],
            # passes over streamed data (C4); gathered over processes only when all of them got here together
            **(loop.data_stats() if world == 1 or status == "complete" else {}),
        )
        record.set_memory(
            **peak.snapshot(), optimizer_state_bytes=optimizer_state_bytes(optimizer),
            optimizer_state_bytes_analytic=analytic_state, parameters=params,
        )
        if rank == 0:
            record.write(status)

    try:
        loop.run()
        if cfg.keep_checkpoint:
            loop.save_checkpoint()
        elif rank == 0 and checkpoint_path.exists():
            checkpoint_path.unlink()  # a complete run needs no resume point; sweeps would pile up GBs
    except Interrupted as stop:
        status = "incomplete"
        exit_code = EXIT_INTERRUPTED.get(stop.reason.removeprefix("received "), 0)
        echo(f"Stopped at step {stop.step} ({stop.reason}); checkpoint at {checkpoint_path}. "
             f"Continue with the same command plus resume=true.")
    except (NonFiniteError, NonFiniteGradientError, SVDFailedError) as exc:
        status, exit_code = "failed", 3
        message = str(exc) if isinstance(exc, NonFiniteError) else f"Training stopped at step {loop.pos.step + 1}: {exc}"
        record.add_note(message)
        echo(f"error: {message}")
    finally:
        if status == "complete" and loop.pos.step < total_steps:
            status = "failed"  # an unexpected exception is propagating
        finish_record(status)
        if logger:
            logger.summary(_flatten(record.eval, "final"))
            logger.finish(exit_code)

    if status == "complete" and cfg.save_model and rank == 0:
        out = results_dir / "models" / name
        method.merge(model).save_pretrained(out)
        echo(f"Merged model saved to {out}")
    echo(f"Result ({status}): {record.path}")
    return Outcome(status, exit_code, record.path, record.to_dict())
