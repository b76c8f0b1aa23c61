"""train_and_record: the training loop, then the result file (and the merged model if asked), whatever happens:
complete, stopped by a signal (incomplete, resumable), or failed; the checkpoint goes only once the result is
safely written."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

from .errors import UserError, first_line
from .handover import Outcome, Trainable
from .planning import Plan
from .session import Session

EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}
EXIT_FAILED = 1  # an error during or after training (a non-finite loss: 3, a user error before it: 2)


def train_and_record(plan: Plan, session: Session, trainable: Trainable, echo) -> Outcome:
    from .state_bytes import optimizer_state_bytes
    from .optim.projector import NonFiniteGradientError, SVDFailedError
    from .sysinfo import PeakMemory
    from .train import Interrupted, NonFiniteError

    cfg, loop, record, total_steps = plan.cfg, session.loop, session.record, session.total_steps
    peak = PeakMemory(session.device)
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
            steps=pos.step, total_steps=total_steps, epochs=pos.epoch + pos.batch / session.steps_per_epoch,
            tokens=pos.tokens, wall_seconds=round(pos.train_seconds, 3),
            tokens_per_second=pos.tokens / pos.train_seconds if pos.train_seconds else None,
            nonfinite_skipped_steps=pos.skipped, accumulation_steps=plan.derived.accumulation_steps,
            eval_seconds=round(session.tracker.eval_seconds, 3),
            total_seconds=round(time.monotonic() - plan.started, 3),  # loading, training, evaluation
            **(loop.data_stats() if plan.world == 1 or status == "complete" else {}),
        )
        record.set_memory(
            **peak.snapshot(), optimizer_state_bytes=optimizer_state_bytes(trainable.optimizer),
            optimizer_state_bytes_analytic=trainable.analytic_state_bytes, parameters=trainable.parameters,
            checkpoint_bytes=session.checkpointer.size_bytes() if plan.rank == 0 else None,
            **session.tracker.reserved_memory(),
        )
        try:
            if plan.rank == 0:
                record.write(status)
                echo(f"Result ({status}): {record.written_to}")
                if record.written_to != record.path:
                    echo(f"The complete result of this config at {record.path} was kept.")
        finally:
            session.tracker.finish(exit_code)

    if status == "complete" and not cfg.keep_checkpoint and plan.rank == 0:
        session.checkpointer.remove()  # only once the result is safely written; sweeps would pile up GBs of them
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
    if isinstance(exc, UserError) or not str(exc).strip():
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)} (HYDRA_FULL_ERROR=1 shows the traceback)"


def _log_above_the_progress_bar(progress: bool):
    if not progress:
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()
