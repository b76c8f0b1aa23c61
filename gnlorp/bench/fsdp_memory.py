"""Peak memory per process of LLaMA-20M under DDP and FSDP2, side by side (CPU, gloo).

    python -m gnlorp.bench.fsdp_memory [--nproc 2] [--methods full galore gradnormlorp] [--steps 3]

For each method and mode it launches `torchrun --nproc_per_node=N` on this file, trains a few steps on random
tokens (batch 2 x 128 tokens per process, rank 8, 32-bit states), and prints per rank: the peak RSS, the RSS
before the model was built (Python, torch, transformers and the method's imports), and the bytes this process holds of the parameters, the
gradients (measured after backward, before the step) and the optimizer states.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

MODEL = dict(kind="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
             vocab_size=32000, max_position_embeddings=1024)  # conf/model/llama_20m.yaml


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _local_bytes(tensors) -> int:
    return sum((t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size() for t in tensors)


def child(mode: str, method_name: str, steps: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from ..state_bytes import optimizer_state_bytes
    from ..methods import MethodConfig, get_method
    from ..models import build_llama

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    get_method(method_name).prepare(build_llama(MODEL, device="meta"), MethodConfig(
        name=method_name, rank=8 if method_name != "full" else None))  # imports transformers (and peft) first
    base = _rss_mib()
    # under FSDP only rank 0 builds the weights; the others build on the meta device (runner.build_job)
    model = build_llama(MODEL, seed=0, device="meta" if mode == "fsdp" and rank else "cpu")
    cfg = MethodConfig(name=method_name, lr=1e-3, rank=8 if method_name != "full" else None, update_proj_gap=200)
    method = get_method(method_name)
    model = method.prepare(model, cfg)
    forward = model
    if mode == "fsdp":
        from ..fsdp import shard_from_rank0

        shard_from_rank0(model, torch.device("cpu"))
    else:
        forward = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = method.build_optimizer(model, cfg)
    g = torch.Generator().manual_seed(rank)
    grad_bytes = 0
    for _ in range(steps):
        ids = torch.randint(0, MODEL["vocab_size"], (2, 128), generator=g)
        forward(input_ids=ids, labels=ids).loss.backward()
        grad_bytes = _local_bytes([p.grad for p in model.parameters() if p.grad is not None])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    row = {"mode": mode, "method": method_name, "rank": rank, "world": world, "peak_rss_mib": round(_rss_mib(), 1),
           "baseline_rss_mib": round(base, 1), "param_mib": _local_bytes(list(model.parameters())) / 2**20,
           "grad_mib": grad_bytes / 2**20, "optimizer_state_mib": optimizer_state_bytes(optimizer) / 2**20}
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["full", "galore", "gradnormlorp"])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"LLaMA-20M, {args.nproc} processes (gloo, CPU), batch 2 x 128 tokens per process, rank 8, fp32 states")
    print(f"{'method':14s}{'mode':6s}{'rank':>5s}{'peak RSS':>11s}{'baseline':>10s}{'params':>9s}{'grads':>8s}"
          f"{'opt state':>11s}   (MiB)")
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for mode in ("ddp", "fsdp"):
                out = os.path.join(tmp, f"{method}-{mode}.json")
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                       "-m", "gnlorp.bench.fsdp_memory", "--child", mode, method, str(args.steps), out]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode:
                    print(done.stdout[-2000:], done.stderr[-3000:])
                    return 1
                for r in json.load(open(out)):
                    print(f"{method:14s}{mode:6s}{r['rank']:>5d}{r['peak_rss_mib']:>11.1f}{r['baseline_rss_mib']:>10.1f}"
                          f"{r['param_mib']:>9.1f}{r['grad_mib']:>8.1f}{r['optimizer_state_mib']:>11.1f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(main())
