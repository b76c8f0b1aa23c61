"""One training loop for GLUE fine-tuning and C4 pre-training.

Gradient accumulation (exact, also over a partial last batch and across DDP processes), 10% warmup then
cosine decay to 10% of the peak, gradient clipping, bf16 autocast, evaluation, checkpoints holding
everything a resume needs (model, optimizer with its projectors, scheduler, RNG states, data position),
SIGINT/SIGTERM handling, and NaN/Inf checks. The loop knows nothing about tasks or methods: a `Job`
gives it data, a model, an optimizer and an evaluation function.
"""

from __future__ import annotations

import math
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

from .distributed import wait_for_rank0
from .optim.layerwise import base_optimizer


def _is_fsdp(model: nn.Module) -> bool:
    from .fsdp import is_fsdp

    return is_fsdp(model)


def _no_gradient_sync(model: nn.Module):
    from .fsdp import no_gradient_sync

    return no_gradient_sync(model)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (FSDP), else the tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/Inf and the config says to stop."""


class Interrupted(Exception):
    """Training stopped early (a signal, or train.stop_at_step); a checkpoint was written."""

    def __init__(self, reason: str, step: int):
        super().__init__(reason)
        self.reason, self.step = reason, step


@dataclass
class TrainData:
    """Examples addressed by index; `collate` turns a list of indices into a model batch."""

    num_examples: int
    collate: Callable[[list[int]], dict]
    count_tokens: Callable[[dict], int]
    drop_last: bool = False
    # Endless data read in a fixed order (C4): global batches come from stream.next_batch() (positions whose
    # share for this rank `collate` turns into a batch), not from epoch permutations. It has state_dict(),
    # load_state_dict(), close(), stats() and merge_stats(list); the states of all ranks merge by dict union.
    stream: object | None = None
    # Tokens per example: each epoch's order then puts examples of similar lengths in a batch (less padding).
    lengths: list[int] | None = None


@dataclass
class LoopConfig:
    total_steps: int
    batch_size: int
    micro_batch_size: int
    seed: int = 0
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int | None = None       # None: at each epoch end
    eval_at_epoch_end: bool = True
    log_every: int = 10
    checkpoint_every: int | None = None
    stop_at_step: int | None = None
    on_nonfinite: str = "stop"
    autocast: torch.dtype | None = None
    progress: bool = True


@dataclass
class Position:
    step: int = 0          # optimizer steps done
    epoch: int = 0
    batch: int = 0         # global batches done within `epoch`
    tokens: int = 0
    skipped: int = 0       # steps skipped for a non-finite loss/gradient
    train_seconds: float = 0.0


def steps_per_epoch(data: TrainData, batch_size: int) -> int:
    """Global batches in one pass over the data (a partial last batch counts unless drop_last)."""
    if data.drop_last:
        return data.num_examples // batch_size
    return math.ceil(data.num_examples / batch_size)


def warmup_cosine(total_steps: int, warmup_ratio: float, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup over the first warmup_ratio of the steps, then cosine to min_ratio: transformers'
    get_cosine_with_min_lr_schedule_with_warmup (and GaLore's scripts) but one step earlier in the warmup. They take
    update s at s/W of the peak, so the first update is at lr 0 (Adam's moments move, the weights do not); here
    update s is at (s+1)/W, so every one of the W warmup updates moves the weights and the last is at the peak.
    From the end of the warmup on the two are the same curve (tests/unit/test_train.py compares them)."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class StepResult(NamedTuple):
    loss: float      # the mean loss over the global batch
    tokens: int
    applied: bool    # False: skipped for a non-finite loss or gradient


class TrainLoop:
    """A Stateful (state_dict / load_state_dict) that hands its state to `checkpointer` (gnlorp/checkpointer.py)
    every cfg.checkpoint_every steps and when it stops early; without one it keeps no checkpoint."""

    def __init__(
        self,
        model: nn.Module,
        optimizer,
        data: TrainData,
        cfg: LoopConfig,
        *,
        evaluate: Callable[[nn.Module], dict],
        on_log: Callable[[int, dict], None],
        on_eval: Callable[[int, int, dict], None],
        device: torch.device,
        checkpointer=None,
        extra_state: Callable[[], dict] = dict,
        world_size: int = 1,
        rank: int = 0,
        ddp_model: nn.Module | None = None,
        after_step: Callable[[int], None] | None = None,
        lr_lambda: Callable[[int], float] | None = None,
        after_skipped_step: Callable[[int], None] | None = None,
    ):
        self.model, self.optimizer, self.data, self.cfg = model, optimizer, data, cfg
        self.forward_model = ddp_model or model
        # FSDP2 (train.parallel=fsdp): the model itself is the sharded module; checkpoints are DCP folders
        self.sharded = world_size > 1 and ddp_model is None and _is_fsdp(model)
        self.evaluate, self.on_log, self.on_eval = evaluate, on_log, on_eval
        self.checkpointer, self.device, self.extra_state = checkpointer, device, extra_state
        self.world_size, self.rank = world_size, rank
        # a method's hooks (methods/spec.py): after_step(step) after each applied optimizer step (its state lives
        # in the model or the optimizer, so checkpoints hold it), after_skipped_step(step) after a step skipped
        # for a non-finite loss or gradient, lr_lambda in place of warmup_cosine
        self.after_step, self.after_skipped_step = after_step, after_skipped_step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            base_optimizer(optimizer), lr_lambda or warmup_cosine(cfg.total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
        )
        self.pos = Position()
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps_per_epoch = steps_per_epoch(data, cfg.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{data.num_examples} examples do not fill one batch of {cfg.batch_size}")
        self._signal: str | None = None
        self._data_state: dict | None = None

    # ------------------------------------------------------------------ data order
    def _epoch_order(self, epoch: int) -> list[int]:
        if self.data.stream is not None:
            return []
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        if self.data.lengths is not None:
            from transformers.trainer_pt_utils import get_length_grouped_indices

            return get_length_grouped_indices(self.data.lengths, self.cfg.batch_size, generator=g)
        return torch.randperm(self.data.num_examples, generator=g).tolist()

    def _global_batch(self, order: list[int], index: int) -> list[int]:
        if self.data.stream is not None:
            return self.data.stream.next_batch()
        return order[index * self.cfg.batch_size:(index + 1) * self.cfg.batch_size]

    def _micro_batches(self, batch: list[int]) -> list[list[int]]:
        """This process's share of a global batch (shares differ by one row at most), cut into micro-batches.
        Every process runs as many micro-batches as the largest share needs, since each forward and backward
        holds collectives (FSDP's all-gathers, DDP's last all-reduce) that all processes must join: one short
        of rows (5 rows over 2 processes in micro-batches of 2: [2, 1] and [2]; or no row at all) gets empty
        ones, which _step runs on a row at weight 0."""
        base, extra = divmod(len(batch), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        mine = batch[start:start + base + (self.rank < extra)]
        mb = self.cfg.micro_batch_size
        count = math.ceil(math.ceil(len(batch) / self.world_size) / mb)
        micro = [mine[i:i + mb] for i in range(0, len(mine), mb)]
        return micro + [[] for _ in range(count - len(micro))]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resume needs; sharded (FSDP), this rank's part without the model (DCP saves it)."""
        optimizer = base_optimizer(self.optimizer)
        if self.sharded:
            from .fsdp import local_optimizer_state

            optimizer_state = local_optimizer_state(optimizer)
        else:
            optimizer_state = optimizer.state_dict()
        state = {
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "position": vars(self.pos).copy(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "extra": self.extra_state(),
        }
        if self.data.stream is not None:
            # in save_checkpoint: every process's streams, gathered just before; else this process's
            state["data"] = self._data_state if self._data_state is not None else self.data.stream.state_dict()
            self._data_state = None
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if not self.sharded:
            state["model"] = self.model.state_dict()
        return state

    def _gather(self, local):
        """Every process's `local`, in rank order (a collective: all processes must call it)."""
        if self.world_size == 1:
            return [local]
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # all_gather_object stages through the current device
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, local)
        return parts

    def data_stats(self) -> dict:
        """Totals of a data stream over all processes (passes, documents); {} for indexed data. Collective."""
        if self.data.stream is None:
            return {}
        return self.data.stream.merge_stats(self._gather(self.data.stream.stats()))

    def save_checkpoint(self) -> None:
        """Hand this loop's state to the checkpointer (a collective: all processes must call it)."""
        if self.data.stream is not None:  # rank 0 writes the state of every process's streams
            self._data_state = {k: v for part in self._gather(self.data.stream.state_dict()) for k, v in part.items()}
        if self.checkpointer is not None:
            self.checkpointer.save(self)

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's state; sharded, the model was already loaded by sharded_checkpoint.load_sharded."""
        if self.sharded:
            from .fsdp import restore_optimizer_state

            restore_optimizer_state(base_optimizer(self.optimizer), state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            base_optimizer(self.optimizer).load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.pos = Position(**state["position"])
        if self.data.stream is not None:
            if "data" not in state:
                from .errors import UserError

                raise UserError("the checkpoint holds no position in the data stream (it was written before C4 "
                                "data was streamed); start over without resume=true.")
            self.data.stream.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    # ------------------------------------------------------------------ signals
    def _handle_signal(self, signum, frame) -> None:
        self._signal = signal.Signals(signum).name

    def _install_signals(self):
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._handle_signal)
            except ValueError:  # not in the main thread
                pass
        return previous

    # ------------------------------------------------------------------ one step
    def _step(self, batch: list[int]) -> StepResult:
        """Forward/backward over the micro-batches of one global batch, then the optimizer step."""
        micro = self._micro_batches(batch)
        if hasattr(self.optimizer, "begin_step"):  # layer-wise mode steps inside the last backward pass
            self.optimizer.begin_step(len(micro))
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.cfg.autocast)
            if self.cfg.autocast is not None else nullcontext()
        )
        total_loss = torch.zeros((), device=self.device)
        tokens = 0
        self.forward_model.train()
        pad = micro[0][:1] or batch[:1]  # the row an empty micro-batch runs at weight 0 (_micro_batches)
        for i, idx in enumerate(micro):
            inputs = {k: v.to(self.device) for k, v in self.data.collate(idx or pad).items()}
            if idx:
                tokens += self.data.count_tokens(inputs)
            # weight so that the summed gradient is the mean over the whole global batch (exact for a
            # partial last batch, and after DDP averages over processes)
            weight = len(idx) * self.world_size / len(batch)
            last = i == len(micro) - 1
            sync = nullcontext()
            if self.world_size > 1 and not last:
                sync = _no_gradient_sync(self.model) if self.sharded else self.forward_model.no_sync()
            with sync, autocast:
                loss = self.forward_model(**inputs).loss
            (loss * weight).backward()
            if idx:
                total_loss += loss.detach().float() * (len(idx) / len(batch))
        if self.world_size > 1:
            torch.distributed.all_reduce(total_loss)
            t = torch.tensor([tokens], device=self.device)
            torch.distributed.all_reduce(t)
            tokens = int(t.item())
        loss_value = float(total_loss)

        bad = None
        if not math.isfinite(loss_value):
            where = self._first_nonfinite()
            bad = f"the loss is {loss_value}" + (f" and {where}" if where else "")
        else:
            grads = [p for p in self.params if p.grad is not None]
            if grads:  # layer-wise mode has already stepped and freed them
                max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
                norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
                if not torch.isfinite(norm):
                    name = next((self.names.get(id(p), "?") for p in grads if not torch.isfinite(_local(p.grad)).all()), "?")
                    bad = f"the gradient of {name} holds NaN/Inf"
        if bad is not None:
            step = self.pos.step + 1
            if self.cfg.on_nonfinite != "skip":
                raise NonFiniteError(
                    f"Training stopped at step {step}: {bad}; lower train.lr, keep train.grad_clip > 0, "
                    "or set train.on_nonfinite=skip to skip such steps."
                )
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(loss_value, tokens, False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, tokens, True)

    def _first_nonfinite(self) -> str | None:
        """Which parameter a non-finite loss comes from: the first NaN/Inf weight, else gradient."""
        for p in self.params:
            if not torch.isfinite(_local(p.detach())).all():
                return f"the weight {self.names.get(id(p), '?')} holds NaN/Inf"
        for p in self.params:
            if p.grad is not None and not torch.isfinite(_local(p.grad)).all():
                return f"the gradient of {self.names.get(id(p), '?')} holds NaN/Inf"
        return None

    # ------------------------------------------------------------------ the loop
    def run(self) -> Position:
        cfg = self.cfg
        previous = self._install_signals()
        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.total_steps, initial=self.pos.step, desc="train", unit="step", dynamic_ncols=True)
        try:
            order = self._epoch_order(self.pos.epoch)
            while self.pos.step < cfg.total_steps:
                if self.pos.batch >= self.steps_per_epoch:
                    self._end_epoch()
                    order = self._epoch_order(self.pos.epoch)
                batch = self._global_batch(order, self.pos.batch)
                t0 = time.perf_counter()
                loss, tokens, applied = self._step(batch)
                self.pos.train_seconds += time.perf_counter() - t0
                lr = base_optimizer(self.optimizer).param_groups[0]["lr"]  # the lr this step used
                self.scheduler.step()
                self.pos.step += 1
                self.pos.batch += 1
                self.pos.tokens += tokens
                self.pos.skipped += not applied
                hook = self.after_step if applied else self.after_skipped_step
                if hook is not None:
                    hook(self.pos.step)
                tps = self.pos.tokens / max(self.pos.train_seconds, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
                if self.rank == 0:
                    self.on_log(self.pos.step, {"loss": loss, "lr": lr, "tokens_per_second": tps})
                epoch_done = self.pos.batch >= self.steps_per_epoch
                if (
                    (cfg.eval_every and self.pos.step % cfg.eval_every == 0)
                    or (epoch_done and cfg.eval_at_epoch_end)
                    or self.pos.step == cfg.total_steps
                ):
                    self._evaluate()
                if cfg.checkpoint_every and self.pos.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._signal or (cfg.stop_at_step and self.pos.step >= cfg.stop_at_step and self.pos.step < cfg.total_steps):
                    reason = f"received {self._signal}" if self._signal else f"train.stop_at_step={cfg.stop_at_step}"
                    self.save_checkpoint()
                    raise Interrupted(reason, self.pos.step)
        finally:
            if self.data.stream is not None:
                self.data.stream.close()
            if bar is not None:
                bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.pos

    def _end_epoch(self) -> None:
        self.pos.epoch += 1
        self.pos.batch = 0

    def _evaluate(self) -> None:
        if self.sharded:  # the sharded forward is collective: every rank evaluates, rank 0 reports
            metrics = self.evaluate(self.model)
        if self.rank == 0:
            if not self.sharded:
                metrics = self.evaluate(self.model)
            epochs_done = self.pos.epoch + (self.pos.batch >= self.steps_per_epoch)
            self.on_eval(self.pos.step, epochs_done, metrics)
        if self.world_size > 1:
            wait_for_rank0()  # DDP: rank 0 evaluated alone
