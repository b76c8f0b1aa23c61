"""`make gpu-check`: every CUDA path once, in at most ~8 minutes on one modern GPU, with figures beside the
memory model's: each method in bf16 and with 8-bit states on LLaMA-60M (and full training with torchao's 8- and 4-bit
AdamW when torchao is installed) (30 steps of 8 x 256 tokens: peak CUDA
memory allocated / reserved, tokens/s), layer-wise 8-bit GradNormLoRP on LLaMA-1B, the LLaMA-7B GradNormLoRP
step under a 24 GiB cap (torch.cuda.set_per_process_memory_fraction), and the bf16 weight-norm layer against a
float64 reference. Writes results/gpu/*.json with the device's name.

Without a GPU it runs a dry version of every path on the CPU (LLaMA-tiny, 2 steps, nothing written unless
--out-dir is given): tests/e2e/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from .methods import METHODS as REGISTRY

METHODS = tuple(REGISTRY)  # every method of the registry, in its row order
GIB = 1024**3


def _train(model_name, method, rank, optim_bits, device, *, steps, batch, seq_len, layerwise=False, checkpointing=False,
           optim_library=None):
    from .memory_model import Setup, peak
    from .methods import MethodConfig, get_method
    from .state_bytes import optimizer_state_bytes
    from .models import build_llama, enable_activation_checkpointing, llama_model_cfg

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = build_llama(llama_model_cfg(model_name), seed=0, device=device)
    finally:
        torch.set_default_dtype(previous)
    enable_activation_checkpointing(model, checkpointing)
    cfg = MethodConfig(name=method, rank=None if method == "full" else rank, optim_bits=optim_bits,
                       layerwise=layerwise, svd="randomized" if layerwise else "auto", lr=1e-3,
                       optim_library=optim_library)
    m = get_method(method)
    analytic = m.state_bytes(model, cfg)  # as the runner does, on the model before the method's preparation
    model = m.prepare(model, cfg)
    model.train()
    opt = m.build_optimizer(model, cfg)
    vocab = model.config.vocab_size if hasattr(model, "config") else llama_model_cfg(model_name)["vocab_size"]
    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    predicted = peak(Setup(model=model_name, method=method, rank=cfg.rank, dtype="bf16", optim_bits=optim_bits,
                           optim_library=optim_library, batch=batch, seq_len=seq_len, layerwise=layerwise,
                           checkpointing=checkpointing, svd=getattr(cfg, "svd", "auto"))).peak
    row = {"model": model_name, "method": method, "rank": cfg.rank, "optim_bits": optim_bits, "layerwise": layerwise,
           "checkpointing": checkpointing, "steps": steps, "batch": batch, "seq_len": seq_len,
           "tokens_per_second": steps * batch * seq_len / seconds, "first_loss": losses[0], "last_loss": losses[-1],
           "predicted_peak_bytes": predicted, "optim_library": optim_library,
           "optimizer_state_bytes": optimizer_state_bytes(opt), "optimizer_state_bytes_analytic": analytic}
    if cuda:
        stats = torch.cuda.memory_stats()
        row["max_allocated_bytes"] = int(stats["allocated_bytes.all.peak"])
        row["max_reserved_bytes"] = int(stats["reserved_bytes.all.peak"])
        row["relative_error"] = (predicted - row["max_allocated_bytes"]) / row["max_allocated_bytes"]
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    if not all(map(lambda x: x == x and abs(x) != float("inf"), losses)):
        raise RuntimeError(f"{model_name} {method} {optim_bits}-bit: non-finite loss {losses}")
    return row


def weightnorm_check(device) -> dict:
    """The bf16 weight-norm layer's output and gradients against the same layer in float64."""
    from .optim import WeightNormLinear

    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(128, 256, generator=g) * 0.05)
    x = torch.randn(4, 32, 256, generator=g)
    out = {}
    for dtype in (torch.float64, torch.bfloat16):
        layer = WeightNormLinear(torch.nn.Linear(256, 128, bias=False)).to(device)
        with torch.no_grad():
            layer.direction.copy_(lin.weight)
            layer.magnitude.copy_(lin.weight.norm(dim=1))
        layer = layer.to(dtype)
        xi = x.to(device, dtype).requires_grad_(True)
        y = layer(xi)
        y.float().square().sum().backward()
        out[dtype] = [t.detach().double().cpu() for t in (y, xi.grad, layer.direction.grad, layer.magnitude.grad)]
    errors = [float((b - a).norm() / a.norm()) for a, b in zip(out[torch.float64], out[torch.bfloat16])]
    if max(errors) > 0.05:
        raise RuntimeError(f"bf16 weight-norm layer on {device}: relative errors {errors} exceed 5%")
    return {"relative_errors_vs_float64": dict(zip(("output", "grad_x", "grad_direction", "grad_magnitude"), errors))}


def run(device: torch.device, dry: bool) -> dict:
    from .sysinfo import device_info, git_info, package_versions

    small, big, huge = ("llama_tiny",) * 3 if dry else ("llama_60m", "llama_1b", "llama_7b")
    steps, batch, seq = (2, 2, 32) if dry else (30, 8, 256)
    results = {"device": device_info(), "dry_run": dry, "git": git_info(), "packages": package_versions()}
    results["methods"] = [
        _train(small, method, 8 if dry else 128, bits, device, steps=steps, batch=batch, seq_len=seq)
        for method in METHODS for bits in (32, 8)
    ]
    if importlib.util.find_spec("torchao") is not None:  # precision=ao8bit / ao4bit: torchao's AdamW8bit / AdamW4bit
        results["torchao_full"] = [_train(small, "full", None, bits, device, steps=steps, batch=batch, seq_len=seq,
                                          optim_library="torchao") for bits in (8, 4)]
    else:
        results["torchao_full"] = {"skipped": "torchao is not installed (pip install 'gnlorp[lowbit]')"}
    results["layerwise_1b"] = _train(big, "gradnormlorp", 8 if dry else 512, 8, device, steps=2 if dry else 10,
                                     batch=1 if dry else 4, seq_len=seq, layerwise=True, checkpointing=True)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 24 * GIB / total), device)
    try:
        results["llama7b_24gib"] = _train(huge, "gradnormlorp", 8 if dry else 512, 8, device, steps=2, batch=1,
                                          seq_len=32 if dry else 256, layerwise=True, checkpointing=True)
    except torch.OutOfMemoryError as exc:  # a result too: the 24 GiB claim failed here
        results["llama7b_24gib"] = {"out_of_memory": str(exc).splitlines()[0]}
    finally:
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    results["weightnorm_bf16"] = weightnorm_check(device)
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=None, help="default: results/gpu on a GPU, nothing on a CPU")
    ap.add_argument("--dry", action="store_true", help="the tiny CPU version even where a GPU is present")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.dry
    device = torch.device("cuda" if cuda else "cpu")
    t = time.perf_counter()
    results = run(device, dry=not cuda)
    results["seconds"] = time.perf_counter() - t
    out_dir = a.out_dir or (Path("results/gpu") if cuda else None)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = (results["device"].get("name") or device.type).replace(" ", "_").replace("/", "_")
        (out_dir / f"gpu_check_{name}.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for row in results["methods"] + (results["torchao_full"] if isinstance(results["torchao_full"], list) else []):
        print(f"{row['model']} {row['method']:<13} {row['optim_bits']:>2}-bit{' torchao' if row['optim_library'] else ''}  {row['tokens_per_second']:10.0f} tok/s  "
              f"max allocated {row.get('max_allocated_bytes', 0) / GIB:.2f} GiB  model {row['predicted_peak_bytes'] / GIB:.2f} GiB")
    print(f"{'dry run (CPU)' if not cuda else results['device']['name']}: every path ran in {results['seconds']:.1f} s")


if __name__ == "__main__":
    main()
