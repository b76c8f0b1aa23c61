"""C4 evaluation throughput: the runner's evaluation (gnlorp.jobs.c4_mean_loss, inference mode) at several batch
sizes, against the loop it replaced (no_grad, 16 blocks a batch), on the CPU recipe's model. Prints tokens/s per
variant (median over rounds, variants interleaved within each round so that a busy machine slows all alike) and
what the CPU recipe's evaluation (512 reported + 512 selection blocks of 256 tokens) would take.

  python -m gnlorp.bench.c4_eval                        # llama_20m, 64 blocks of 256 random tokens, 1 thread
  python -m gnlorp.bench.c4_eval --blocks 128 --batch-sizes 8 16 32 64 --rounds 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

RECIPE_BLOCKS = 1024  # c4_llama_20m_cpu: task.eval_tokens + task.selection_tokens = 2 x 131,072 tokens of 256


def _before(m, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """The evaluation loop before inference mode (gnlorp/jobs.py up to 2026-12-04): no_grad, 16 blocks a batch."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i:i + batch_size]
            n = ids.shape[0] * (ids.shape[1] - 1)
            total += m(input_ids=ids, labels=ids).loss.float().item() * n
            count += n
    return total / count


def main(argv=None) -> dict:
    from gnlorp.jobs import c4_mean_loss
    from gnlorp.models import build_llama, llama_model_cfg

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama_20m")
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = llama_model_cfg(args.model)
    model = build_llama(cfg, seed=0).eval()
    blocks = torch.randint(0, cfg["vocab_size"], (args.blocks, args.seq_len), generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    variants = {"before: no_grad, batch 16": lambda: _before(model, blocks)}
    for b in args.batch_sizes:
        variants[f"inference mode, batch {b}"] = (
            lambda b=b: c4_mean_loss(model, blocks, cpu, autocast_dtype=None, batch_size=b, report=lambda line: None)["loss"])
    losses = {name: fn() for name, fn in variants.items()}  # warm-up, and the same loss from every variant
    spread = max(losses.values()) - min(losses.values())
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    tokens = args.blocks * (args.seq_len - 1)
    print(f"{args.model}, {args.blocks} blocks x {args.seq_len} tokens, {args.threads} thread(s), median of "
          f"{args.rounds} rounds; losses agree to {spread:.1e}")
    print(f"{'variant':<28} {'tokens/s':>10} {'recipe eval (1024 blocks)':>26}")
    out = {}
    for name, s in seconds.items():
        rate = tokens / statistics.median(s)
        recipe_min = RECIPE_BLOCKS * (args.seq_len - 1) / rate / 60
        out[name] = {"tokens_per_s": rate, "recipe_eval_min": recipe_min, "seconds": s}
        print(f"{name:<28} {rate:>10,.0f} {recipe_min:>22.1f} min")
    assert math.isfinite(spread)
    return out


if __name__ == "__main__":
    main()
