"""The two kinds of job: GLUE fine-tuning of an encoder, and C4 pre-training of a LLaMA. Each gives the
training loop a model, training data (indexable for GLUE, a stream for C4), and an evaluation function returning
{split: {metric: value}}, plus the name of its headline metric."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .train import TrainData


@dataclass
class Job:
    model: nn.Module
    data: TrainData
    evaluate: Callable[[nn.Module], dict]
    main_split: str
    main_metric: str
    higher_is_better: bool
    eval_at_epoch_end: bool
    description: str
    baseline: dict | None = None  # what an input-blind model scores (GLUE: GlueData.trivial_baseline)


def _autocast(device: torch.device, dtype):
    from contextlib import nullcontext

    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def glue_job(cfg, device: torch.device, autocast_dtype, eval_batch_size: int = 64) -> Job:
    from .models import build_encoder_classifier, enable_activation_checkpointing, load_encoder_tokenizer
    from .tasks.glue import load_glue

    t = cfg.task
    tokenizer = load_encoder_tokenizer(cfg.model)
    data = load_glue(
        t.name, tokenizer, data_dir=t.data_dir, max_length=t.max_length,
        max_train_samples=t.max_train_samples, max_eval_samples=t.max_eval_samples, seed=cfg.seed,
        selection_samples=t.selection_samples,
    )
    if not data.train:

        raise UserError(f"The {t.name} train split is empty ({data.source}); check task.data_dir or task.max_train_samples.")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "classifier newly initialized" load report is expected here
    model = build_encoder_classifier(
        cfg.model, data.num_labels, problem_type="regression" if data.is_regression else "single_label_classification"
    )
    enable_activation_checkpointing(model, cfg.train.activation_checkpointing)
    train = data.train

    def collate(indices: list[int]) -> dict:
        return data.collate([train[i] for i in indices])

    # longest first, so each batch pads little; every GLUE metric is blind to the order of the rows
    eval_splits = {split: sorted(rows, key=lambda row: len(row["input_ids"]), reverse=True)
                   for split, rows in data.eval_splits.items()}

    def evaluate(m: nn.Module) -> dict:
        m.eval()
        out = {}
        with torch.no_grad(), _autocast(device, autocast_dtype):
            for split, rows in eval_splits.items():
                preds, labels = [], []
                for i in range(0, len(rows), eval_batch_size):
                    batch = data.collate(rows[i:i + eval_batch_size])
                    labels.append(batch.pop("labels"))
                    logits = m(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
                    preds.append(logits.squeeze(-1) if data.is_regression else logits.argmax(-1))
                out[split] = data.compute_metrics(torch.cat(preds).numpy(), torch.cat(labels).numpy())
        return out

    return Job(
        model=model,
        data=TrainData(len(train), collate, lambda b: int(b["attention_mask"].sum()), drop_last=False,
                       lengths=[len(row["input_ids"]) for row in train] if cfg.train.group_by_length else None),
        evaluate=evaluate,
        main_split=next(iter(data.eval_splits)),
        main_metric=data.main_metric,
        higher_is_better=True,
        eval_at_epoch_end=True,
        description=f"GLUE {t.name}: {len(train)} train examples from {data.source}"
                    + (f", {len(data.eval_splits['selection'])} held out for selection" if "selection" in data.eval_splits
                       else ""),
        baseline=data.trivial_baseline(),
    )


C4_EVAL_BATCH = 16  # blocks per evaluation batch (python -m gnlorp.bench.c4_eval measures the choice)
PROGRESS_EVERY_S = 10.0


def c4_mean_loss(m: nn.Module, blocks: torch.Tensor, device: torch.device, *, autocast_dtype, batch_size: int,
                 split: str = "", report=None) -> dict:
    """Mean next-token loss over `blocks` (and its perplexity), in inference mode; a line with the blocks done and
    the time left every PROGRESS_EVERY_S seconds (to `report`, default stderr)."""
    import sys
    import time

    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    total, count = 0.0, 0
    started = last = time.monotonic()
    # inference mode where the parameters are plain tensors; sharded ones (FSDP) re-gather into buffers that
    # training reuses, so there no_grad
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    with (torch.no_grad() if distributed else torch.inference_mode()), _autocast(device, autocast_dtype):
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i:i + batch_size].to(device)
            loss = m(input_ids=ids, labels=ids).loss.float().item()
            n = ids.shape[0] * (ids.shape[1] - 1)  # predicted tokens
            total += loss * n
            count += n
            now, done = time.monotonic(), min(i + batch_size, len(blocks))
            if now - last >= PROGRESS_EVERY_S and done < len(blocks):
                left = (now - started) / done * (len(blocks) - done)
                report(f"evaluating {split or 'C4'}: {done}/{len(blocks)} blocks, {left / 60:.1f} min left")
                last = now
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}


def c4_job(cfg, device: torch.device, autocast_dtype, eval_batch_size: int = C4_EVAL_BATCH,
           meta_model: bool = False) -> Job:
    """`meta_model`: the LLaMA on the meta device, no memory (FSDP's ranks but 0, which receive rank 0's weights:
    fsdp.shard_from_rank0)."""
    from .models import build_llama, enable_activation_checkpointing
    from .tasks.c4 import cached_eval_blocks, resolve_c4_dir
    from .tasks.c4_stream import c4_train_stream
    from .tokenizers import load_causal_tokenizer, vocab_size_for

    t = cfg.task
    steps = cfg.train.max_steps  # set: gnlorp.checks refuses C4 without it before anything loads
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    tokenizer = load_causal_tokenizer(cfg.model.tokenizer)
    data_dir = resolve_c4_dir(t.data_dir)
    stream = c4_train_stream(tokenizer, data_dir, t.seq_len, cfg.train.batch_size, num_streams=t.streams,
                             buffer_blocks=t.shuffle_blocks, seed=cfg.seed, world_size=world, rank=rank)
    stream.check()
    n_eval = max(1, t.eval_tokens // t.seq_len)
    n_select = t.selection_tokens // t.seq_len
    eval_blocks: list[torch.Tensor] = []  # tokenized (or read from the cache) at the first evaluation, on rank 0
    model_cfg = dict(cfg.model)
    model_cfg["vocab_size"] = vocab_size_for(tokenizer, model_cfg["vocab_size"])
    model = build_llama(model_cfg, seed=cfg.seed, device="meta" if meta_model else "cpu")
    enable_activation_checkpointing(model, cfg.train.activation_checkpointing)

    def evaluate(m: nn.Module) -> dict:
        if not eval_blocks:
            eval_blocks.append(cached_eval_blocks(tokenizer, data_dir, t.seq_len, n_eval + n_select, cache_dir=t.cache_dir))
            if n_select and len(eval_blocks[0]) < n_eval + n_select:
                raise UserError(f"C4 validation from {data_dir or 'the hub'} has {len(eval_blocks[0])} blocks of "
                                f"{t.seq_len} tokens, fewer than task.eval_tokens + task.selection_tokens need "
                                f"({n_eval} + {n_select}); lower task.selection_tokens.")
        m.eval()
        blocks = eval_blocks[0]
        metrics = {"validation": c4_mean_loss(m, blocks[:n_eval], device, autocast_dtype=autocast_dtype,
                                              batch_size=eval_batch_size, split="validation")}
        if n_select:  # the blocks after the reported ones: for choosing settings, never reported
            metrics["selection"] = c4_mean_loss(m, blocks[n_eval:n_eval + n_select], device,
                                                autocast_dtype=autocast_dtype, batch_size=eval_batch_size,
                                                split="selection")
        return metrics

    source = data_dir or "the hub (allenai/c4)"
    tokens = steps * cfg.train.batch_size * t.seq_len
    return Job(
        model=model,
        # one "epoch" is the whole budget of max_steps global batches; passes over the data are in data_stats
        data=TrainData(steps * cfg.train.batch_size, stream.collate, lambda b: int(b["input_ids"].numel()),
                       drop_last=True, stream=stream),
        evaluate=evaluate,
        main_split="validation",
        main_metric="perplexity",
        higher_is_better=False,
        eval_at_epoch_end=False,
        description=f"C4: {tokens:,} train tokens ({steps} steps x {cfg.train.batch_size} x {t.seq_len}) streamed from "
                    f"{source} by {t.streams} streams; validation: {n_eval} blocks"
                    + (f", selection: the next {n_select}" if n_select else ""),
    )
