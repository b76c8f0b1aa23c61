"""C4 loader throughput against training throughput: is the streaming loader ever the bottleneck?

The loader is the training run's own (gnlorp.tasks.c4_stream, one process, local shards): read, tokenize, pack,
shuffle and hand out batches, through its background thread, timed from the trainer's side (next_batch +
collate). Training is one AdamW step of the same LLaMA on batches of the same shape (gnlorp.bench.end_to_end's
step: forward, backward, clipping, optimizer step), fp32. The loader should be >= 20x faster, so that its
thread takes a small share of a core that the training step leaves.

  python -m gnlorp.bench.loader                     # llama_20m, 8 x 256, the shared C4 shard, mistral-sp
  python -m gnlorp.bench.loader --data-dir /data/c4/en --batches 200
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from . import timing

NAME = "loader"
TARGET_RATIO = 20.0
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "c4" / "en"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.common_args(ap, repeats=3, warmup=1)
    ap.add_argument("--data-dir", default=None, help=f"C4 shards (default: $GNLORP_C4_DIR, else {DEFAULT_DATA})")
    ap.add_argument("--tokenizer", default="mistral-sp")
    ap.add_argument("--model", default="llama_20m")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--shuffle-blocks", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=100, help="batches per timed loader sample (default 100)")
    args = ap.parse_args(argv)

    from ..tasks.c4 import resolve_c4_dir
    from ..tasks.c4_stream import c4_train_stream
    from ..tokenizers import load_causal_tokenizer
    from .end_to_end import Stepper

    started = time.perf_counter()
    env = timing.start(args, NAME, argv)
    data_dir = resolve_c4_dir(args.data_dir) or str(DEFAULT_DATA)
    tokenizer = load_causal_tokenizer(args.tokenizer)
    tokens_per_batch = args.batch_size * args.seq_len

    t0 = time.perf_counter()
    loader = c4_train_stream(tokenizer, data_dir, args.seq_len, args.batch_size, num_streams=args.streams,
                             buffer_blocks=args.shuffle_blocks, seed=args.seed)

    def take(n: int) -> None:
        for _ in range(n):
            loader.collate(loader.next_batch())

    take(1)
    first_batch_s = time.perf_counter() - t0
    loader_samples = timing.measure(lambda: take(args.batches), args.repeats, args.warmup)
    loader.close()
    loader_tps = timing.stats(args.batches * tokens_per_batch / x for x in loader_samples.wall)

    step_args = SimpleNamespace(seed=args.seed, precision="fp32", rank=None, scale=0.25, T=200, svd="auto",
                                optim_bits=32, grad_clip=1.0, batch_size=args.batch_size, seq_len=args.seq_len)
    stepper = Stepper("full", step_args, args.model, torch.device("cpu"))
    train_samples = timing.measure(stepper.step, max(args.repeats, 3), max(args.warmup, 1))
    train_tps = timing.stats(tokens_per_batch / x for x in train_samples.wall)
    ratio = loader_tps["median"] / train_tps["median"]
    del stepper
    timing.free_memory()

    row = {"model": args.model, "tokens_per_batch": tokens_per_batch, "first_batch_s": first_batch_s,
           "loader_tokens_per_s": loader_tps, "train_tokens_per_s": train_tps,
           "ratio": ratio, "target_min": TARGET_RATIO, "met": bool(ratio >= TARGET_RATIO)}
    settings = {k: (str(v) if k == "out_dir" else v) for k, v in vars(args).items() if k != "no_write"}
    settings["data_dir"] = data_dir
    payload = timing.result(NAME, env, settings, [row], started, notes=[
        "loader: gnlorp.tasks.c4_stream in one process (its background producer thread included), timed from the "
        "trainer's side over --batches batches per sample; first_batch_s: from building the loader to the first "
        "batch in hand.",
        "train: one AdamW (method=full) step of the same model on batches of the same shape, fp32, torch threads as "
        "set by --threads.",
    ])
    table = timing.markdown_table(
        ["model", "batch", "loader tokens/s", "training tokens/s", "ratio", "target", "met", "first batch s"],
        [[args.model, f"{args.batch_size} x {args.seq_len}", timing.fmt(loader_tps), timing.fmt(train_tps),
          f"{ratio:,.1f}", f">= {TARGET_RATIO:g}", "yes" if row["met"] else "NO", f"{first_batch_s:.2f}"]],
        title=f"C4 loader vs training throughput ({args.streams} streams, {os.path.basename(data_dir)}, "
              f"{args.tokenizer}), median [min, max]",
    )
    return timing.finish(payload, args, keys={"rows": lambda r: r["model"]}, tables=[table])


if __name__ == "__main__":
    main()
