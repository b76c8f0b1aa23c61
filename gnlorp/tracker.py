"""Everything a run keeps about itself while it trains, in one object the training loop calls:
the loss and learning-rate curves, the evaluations with the best and last one, the W&B mirror, the
progress lines, and the part of it a checkpoint must carry so that a resumed run's record is whole.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from .record import RunRecord


def _cuda_in_use() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def _flatten(metrics: dict, prefix: str) -> dict:
    return {f"{prefix}/{split}/{k}": v for split, ms in metrics.items() for k, v in ms.items() if isinstance(v, (int, float))}


class RunTracker:
    def __init__(self, record: RunRecord, *, main_split: str, main_metric: str, higher_is_better: bool,
                 total_steps: int, log_every: int, progress: bool, logger=None, echo: Callable[[str], None] = print):
        self.record, self.logger, self.echo = record, logger, echo
        self.main_split, self.main_metric, self.higher_is_better = main_split, main_metric, higher_is_better
        self.total_steps, self.log_every, self.progress = total_steps, log_every, progress
        self.best: dict = {}
        self.train_seconds: Callable[[], float] = lambda: 0.0  # the loop's clock, for the ETA (spans a resume)
        self.eval_seconds = 0.0       # this process's evaluations (a resumed run: since the resume)
        self._reserved: list[int] = []  # CUDA: the caching allocator's reserved bytes at each logged step
        # ten lines per run say how far it is and how fast it goes: the log file's curve (run.log, a SLURM job's
        # output) whatever the progress bar does on the terminal, where they print above it
        self._report_every = max(1, total_steps // 10)

    # ------------------------------------------------------------------ called by the loop
    def timed(self, evaluate: Callable) -> Callable:
        """`evaluate`, its seconds added to eval_seconds."""
        def run(model):
            started = time.monotonic()
            try:
                return evaluate(model)
            finally:
                self.eval_seconds += time.monotonic() - started
        return run

    def on_log(self, step: int, values: dict) -> None:
        self.record.add_loss(step, values["loss"], values["lr"])
        if _cuda_in_use():
            import torch

            self._reserved.append(torch.cuda.memory_reserved())
        if self.logger and (step % self.log_every == 0 or step == 1):
            self.logger.log({f"train/{k}": v for k, v in values.items()}, step=step)
        if step % self._report_every == 0 and step < self.total_steps:
            eta = (self.total_steps - step) * self.train_seconds() / step
            self.write(f"step {step}/{self.total_steps}: loss {values['loss']:.4f}, "
                       f"{values['tokens_per_second']:,.0f} tokens/s, training ETA {eta / 60:.1f} min")

    def on_eval(self, step: int, epoch: int, metrics: dict) -> None:
        self.record.add_eval(step, metrics, epoch)
        value = metrics[self.main_split][self.main_metric]
        better = not self.best or (value > self.best["value"] if self.higher_is_better else value < self.best["value"])
        if better:
            self.best = {"value": value, "step": step, "epoch": epoch, "metrics": metrics}
        self.record.set_best_last(
            {"step": self.best["step"], "epoch": self.best["epoch"], "metrics": self.best["metrics"]},
            {"step": step, "epoch": epoch, "metrics": metrics},
        )
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics[self.main_split].items() if isinstance(v, float))
        self.write(f"eval step {step} (epoch {epoch}): {self.main_split} {shown}")
        if self.logger:
            self.logger.log(_flatten(metrics, "eval"), step=step)

    def write(self, line: str) -> None:
        self.echo(line)  # during a progress bar the runner routes logging through tqdm (logging_redirect_tqdm)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "loss_curve": self.record.loss_curve, "lr_curve": self.record.lr_curve,
            "eval_history": self.record.eval_history, "best": dict(self.best),
            "wandb_id": self.logger.run_id if self.logger else None,
        }

    def load_state_dict(self, state: dict) -> None:
        lrs = dict((step, lr) for step, lr in state.get("lr_curve", []))
        for step, loss in state["loss_curve"]:
            self.record.add_loss(step, loss, lrs.get(step))
        for e in state["eval_history"]:
            self.record.add_eval(e["step"], e["metrics"], e["epoch"])
        self.best = dict(state["best"])
        if self.best:
            last = state["eval_history"][-1]
            self.record.set_best_last({k: self.best[k] for k in ("step", "epoch", "metrics")}, last)

    # ------------------------------------------------------------------ the end
    def reserved_memory(self) -> dict:
        """CUDA: mean and 99th percentile of the reserved bytes over the logged steps (empty on a CPU)."""
        if not self._reserved:
            return {}
        ordered = sorted(self._reserved)
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        return {"cuda_reserved_mean_bytes": int(sum(ordered) / len(ordered)), "cuda_reserved_p99_bytes": p99}

    def summary(self) -> dict:
        """What W&B's run summary holds: the record's headline figures (scores, memory, sizes, speed)."""
        rec = self.record
        out = {**_flatten(rec.eval, "final"), **_flatten((rec.best or {}).get("metrics", {}), "best"),
               "status": rec.status}
        if rec.best:
            out.update({"best/step": rec.best.get("step"), "best/epoch": rec.best.get("epoch")})
        for key in ("wall_seconds", "tokens_per_second", "tokens", "steps", "eval_seconds", "total_seconds"):
            out[f"train/{key}"] = rec.train.get(key)
        if rec.status == "failed" and rec.notes:
            out["error"] = rec.notes[-1]
        for key, value in rec.memory.items():
            if isinstance(value, (int, float)):
                out[f"memory/{key}"] = value
        for key, value in (rec.memory.get("parameters") or {}).items():
            out[f"parameters/{key}"] = value
        return {k: v for k, v in out.items() if v is not None}

    def finish(self, exit_code: int) -> None:
        if self.logger:
            self.logger.summary(self.summary())
            self.logger.finish(exit_code)
