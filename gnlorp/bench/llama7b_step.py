"""LLaMA-7B training steps on this machine's CPU: bf16 weights, 8-bit Adam states, layer-wise updates, a
randomized-SVD projector at rank 512, activation checkpointing, one sequence of 64 tokens. Records the peak
RSS above the process's baseline (the RSS after every import, before the model is built), the time of each step
and of the projector refresh (the first step computes every projector; the second reuses them), and the peak
the memory model predicts; for 8-bit AdamW it only predicts (it holds every gradient and 2 bytes of state per
parameter: it does not fit in 24 GiB).

    MALLOC_MMAP_THRESHOLD_=65536 prlimit --as=$((21*1024**3)) python -m gnlorp.bench.llama7b_step --method gradnormlorp
    python -m gnlorp.bench.llama7b_step --model llama_1b --method galore                      # a quick try

Writes results/memory/<model>_step_<method>.json (llama7b_step_<method>.json for the 7B), after the build and
after each step (`status` says how far it got). MALLOC_MMAP_THRESHOLD_ keeps freed tensors from staying resident
(gnlorp/bench/peak_memory.py explains it). Time on this CPU (AMX bf16, 1 thread, shared): LLaMA-1B's first step
677 s of which 594 s computing the 168 rank-512 projectors (float32 randomized SVD), its second step 49 s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ..memory_model import GIB, Setup, peak
from ..sysinfo import _current_rss_bytes, _status_kib, device_info, git_info, package_versions


def predict(model: str, method: str, rank: int, seq_len: int, layerwise: bool = True) -> dict:
    s = Setup(model=model, method=method, rank=None if method == "full" else rank, dtype="bf16", optim_bits=8,
              batch=1, seq_len=seq_len, layerwise=layerwise, checkpointing=True, svd="randomized")
    return peak(s).as_dict()


def run(model_name: str, method: str, rank: int, seq_len: int, steps: int, *, threads: int | None,
        save=lambda result: None) -> dict:
    from ..optim.bnb import import_bitsandbytes

    import_bitsandbytes()  # before the baseline, as the optimizer needs it
    import transformers  # noqa: F401

    from ..methods import MethodConfig, get_method
    from ..models import build_llama, llama_model_cfg
    from ..optim import galore_adamw

    if threads:
        torch.set_num_threads(threads)
    baseline = _current_rss_bytes()
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: a float32 7B would need 27 GB
    try:
        model = build_llama(llama_model_cfg(model_name), seed=0)
    finally:
        torch.set_default_dtype(previous)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    cfg = MethodConfig(name=method, rank=rank, optim_bits=8, layerwise=True, svd="randomized", update_proj_gap=500,
                       lr=1e-3, scale=0.25)
    m = get_method(method)
    model = m.prepare(model, cfg)
    optimizer = m.build_optimizer(model, cfg)
    build_s = time.perf_counter() - t0

    refresh = {"seconds": 0.0, "count": 0}
    original = galore_adamw.compute_projection

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            refresh["seconds"] += time.perf_counter() - t
            refresh["count"] += 1
            if refresh["count"] % 16 == 0:
                print(f"  {refresh['count']} projectors, {refresh['seconds']:.0f} s, RSS {_current_rss_bytes() / GIB:.2f} "
                      f"GiB, peak {(_status_kib('VmHWM') or 0) / 2**20:.2f} GiB", flush=True)

    galore_adamw.compute_projection = timed
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    records = []
    predicted = predict(model_name, method, rank, seq_len)

    def result(status: str) -> dict:
        peak_rss = (_status_kib("VmHWM") or 0) * 1024
        measured = peak_rss - baseline
        return {
            "status": status, "model": model_name, "method": method, "rank": rank, "seq_len": seq_len, "batch": 1,
            "weights": "bf16", "optim_bits": 8, "layerwise": True, "activation_checkpointing": True,
            "svd": "randomized", "build_seconds": build_s, "steps": records, "refreshes_done": dict(refresh),
            "baseline_rss_bytes": baseline, "peak_rss_bytes": peak_rss, "peak_above_baseline_bytes": measured,
            "peak_above_baseline_gib": measured / GIB, "predicted": predicted,
            "predicted_peak_gib": predicted["peak"] / GIB, "relative_error": (predicted["peak"] - measured) / measured,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "baseline_note": "RSS after importing torch, transformers, bitsandbytes and gnlorp, before building the "
                             "model",
            "device": device_info(), "git": git_info(), "packages": package_versions(),
        }

    save(result("built"))
    try:
        for i in range(steps):
            before = dict(refresh)
            t = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()  # layer-wise: every parameter is stepped inside backward
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            records.append({"step": i + 1, "seconds": time.perf_counter() - t, "loss": loss.item(),
                            "refresh_seconds": refresh["seconds"] - before["seconds"],
                            "refreshes": refresh["count"] - before["count"],
                            "rss_bytes": _current_rss_bytes()})
            print(f"step {i + 1}: {records[-1]['seconds']:.1f} s (refresh {records[-1]['refresh_seconds']:.1f} s), "
                  f"loss {loss.item():.3f}, RSS {records[-1]['rss_bytes'] / GIB:.2f} GiB", flush=True)
            save(result(f"{i + 1} of {steps} steps done"))
    finally:
        galore_adamw.compute_projection = original
    return result("complete")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama_7b")
    ap.add_argument("--method", default="gradnormlorp", choices=("gradnormlorp", "galore", "full"))
    ap.add_argument("--rank", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", type=Path, default=Path("results/memory"))
    a = ap.parse_args(argv)
    stem = f"{a.model.replace('llama_', 'llama')}_step_{a.method}"
    if a.method == "full":  # 8-bit AdamW: the prediction only (it does not fit in 24 GiB)
        pred = {"layer-wise": predict(a.model, "full", a.rank, a.seq_len),
                "normal": predict(a.model, "full", a.rank, a.seq_len, layerwise=False)}
        result = {"model": a.model, "method": "full (8-bit AdamW)", "weights": "bf16", "optim_bits": 8,
                  "seq_len": a.seq_len, "activation_checkpointing": True, "measured": None,
                  "predicted_peak_gib": {k: v["peak"] / GIB for k, v in pred.items()}, "predicted": pred}
    a.out_dir.mkdir(parents=True, exist_ok=True)
    path = a.out_dir / f"{stem}.json"

    def save(result: dict) -> None:
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    if a.method != "full":
        result = run(a.model, a.method, a.rank, a.seq_len, a.steps, threads=a.threads, save=save)
    save(result)
    print(json.dumps({k: v for k, v in result.items() if k.endswith("gib") or k == "relative_error"}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
