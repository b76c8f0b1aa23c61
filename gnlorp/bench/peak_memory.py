"""Measured peak memory against the memory model (gnlorp/memory_model.py): LLaMA-20M and LLaMA-60M, fp32,
CPU, every method, a few steps of the project's training loop (gnlorp.train.TrainLoop: backward, gradient
clipping, optimizer step, zero_grad) on random token ids, each in a fresh subprocess.

Measured = the process's peak RSS (VmHWM) minus its baseline: the RSS after importing torch, transformers,
peft, bitsandbytes and gnlorp's methods, before the model is built. So it holds the weights, states,
activations and temporaries, and also what no tensor count sees: the allocator's retained pages, oneDNN/MKL
scratch, autograd and Python objects. Each case runs twice: with glibc's default malloc, whose mmap threshold
rises to the size of the largest freed block (up to 32 MiB), so that later tensors of a few MiB come from the
heap and freed ones stay resident; and with MALLOC_MMAP_THRESHOLD_=65536, which keeps the threshold fixed, so
every tensor over 64 KiB is mapped on allocation and unmapped on free and the RSS follows the live tensors.
The model predicts the second; the difference is the default allocator's retention, reported beside it.

    python -m gnlorp.bench.peak_memory            # writes results/memory/peak_llama_{20m,60m}.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ..methods import METHODS

RANKS = {"llama_20m": 64, "llama_60m": 128}  # the CPU C4 recipe's rank, and the paper's at 60M
MIB = 1024**2


def child(model_name: str, method: str, rank: int | None, *, batch: int, seq_len: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from ..optim.bnb import import_bitsandbytes

    import_bitsandbytes()
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from ..memory_model import Setup, peak
    from ..methods import MethodConfig, get_method
    from ..models import build_llama, llama_model_cfg
    from ..sysinfo import _current_rss_bytes, _status_kib
    from ..train import LoopConfig, TrainData, TrainLoop

    baseline = _current_rss_bytes()
    model = build_llama(llama_model_cfg(model_name), seed=0)
    cfg = MethodConfig(name=method, rank=rank, lr=1e-3)
    m = get_method(method)
    model = m.prepare(model, cfg)
    optimizer = m.build_optimizer(model, cfg)
    vocab = llama_model_cfg(model_name)["vocab_size"]
    blocks = torch.randint(0, vocab, (batch * steps, seq_len), generator=torch.Generator().manual_seed(0))
    data = TrainData(len(blocks), lambda idx: {"input_ids": blocks[idx], "labels": blocks[idx]},
                     lambda b: int(b["input_ids"].numel()), drop_last=True)
    loop = TrainLoop(model, optimizer, data, LoopConfig(total_steps=steps, batch_size=batch, micro_batch_size=batch,
                                                        progress=False), evaluate=lambda _: {},
                     on_log=lambda *_: None, on_eval=lambda *_: None,
                     device=torch.device("cpu"))
    loop.run()
    measured = (_status_kib("VmHWM") or 0) * 1024 - baseline
    br = peak(Setup(model=model_name, method=method, rank=rank, batch=batch, seq_len=seq_len))
    return {"model": model_name, "method": method, "rank": rank, "batch": batch, "seq_len": seq_len, "steps": steps,
            "baseline_rss_bytes": baseline, "measured_bytes": measured, "predicted_bytes": br.peak,
            "relative_error": (br.peak - measured) / measured, "breakdown": br.as_dict()}


def measure(model_name: str, method: str, batch: int, seq_len: int, steps: int) -> dict:
    rank = None if method == "full" else RANKS.get(model_name, 64)
    cmd = [sys.executable, "-m", "gnlorp.bench.peak_memory", "--child", model_name, method, str(rank or 0),
           "--batch", str(batch), "--seq-len", str(seq_len), "--steps", str(steps)]
    runs = {}
    for allocator, extra in (("fixed_mmap_threshold", {"MALLOC_MMAP_THRESHOLD_": "65536"}), ("glibc_default", {})):
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**env, **extra}).stdout
        runs[allocator] = json.loads(out.strip().splitlines()[-1])
    row = runs["fixed_mmap_threshold"]
    row["measured_default_malloc_bytes"] = runs["glibc_default"]["measured_bytes"]
    row["default_malloc_retention_bytes"] = row["measured_default_malloc_bytes"] - row["measured_bytes"]
    return row


def format_rows(rows: list[dict]) -> str:
    lines = ["| model | method | rank | measured (MiB) | model (MiB) | error | default malloc (MiB) | peak phase | "
             "weights | states | activations |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["breakdown"]
        lines.append(f"| {r['model']} | {r['method']} | {r['rank'] or '-'} | {r['measured_bytes'] / MIB:.1f} | "
                     f"{r['predicted_bytes'] / MIB:.1f} | {100 * r['relative_error']:+.1f}% | "
                     f"{r['measured_default_malloc_bytes'] / MIB:.1f} | {b['peak_phase']} | "
                     f"{b['weights'] / MIB:.1f} | {b['optimizer_states'] / MIB:.1f} | {b['activations'] / MIB:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "METHOD", "RANK"), help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="*", default=["llama_20m", "llama_60m"])
    ap.add_argument("--methods", nargs="*", default=list(METHODS), help="default: every registered method")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out-dir", type=Path, default=Path("results/memory"))
    a = ap.parse_args(argv)
    if a.child:
        model_name, method, rank = a.child
        print(json.dumps(child(model_name, method, int(rank) or None, batch=a.batch, seq_len=a.seq_len, steps=a.steps)))
        return
    from ..sysinfo import device_info, git_info, package_versions

    all_rows = []
    for model_name in a.models:
        rows = []
        for method in a.methods:
            rows.append(measure(model_name, method, a.batch, a.seq_len, a.steps))
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
        a.out_dir.mkdir(parents=True, exist_ok=True)
        (a.out_dir / f"peak_{model_name}.json").write_text(json.dumps({
            "rows": rows, "measured": "peak RSS (VmHWM) minus the RSS after imports, before the model is built; "
                                      "measured_bytes with MALLOC_MMAP_THRESHOLD_=65536, "
                                      "measured_default_malloc_bytes with glibc's default",
            "device": device_info(), "git": git_info(), "packages": package_versions()}, indent=2, sort_keys=True) + "\n")
        all_rows += rows
    print(format_rows(all_rows))


if __name__ == "__main__":
    main()
