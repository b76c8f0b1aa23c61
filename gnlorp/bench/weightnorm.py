"""Forward and forward+backward cost of GradNormLoRP's weight-norm reparameterization (WeightNormLinear,
W = diag(g) V / ||V||_row) against a plain nn.Linear of the same shape, on the target-matrix shapes of
LLaMA-20M / 60M and a batch of tokens (default 8 x 256 = 2048 rows), in float32 and in bf16 autocast.

  python -m gnlorp.bench.weightnorm                   # CPU: fp32 only (see --precisions)
  python -m gnlorp.bench.weightnorm --models llama_60m --tokens 4096 --precisions bf16 --repeats 9
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from torch import nn

from . import timing
from .shapes import unique_shapes

NAME = "weightnorm"
PRECISIONS = ("fp32", "bf16")


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_pair(out_f: int, in_f: int, device, seed: int):
    from ..optim import WeightNormLinear

    torch.manual_seed(seed)
    plain = nn.Linear(in_f, out_f, bias=False, device=device)
    base = nn.Linear(in_f, out_f, bias=False, device=device)
    with torch.no_grad():
        base.weight.copy_(plain.weight)
    return plain, WeightNormLinear(base)


def bench_shape(shape, args, device, sync) -> list[dict]:
    out_f, in_f = shape
    plain, wn = make_pair(out_f, in_f, device, args.seed)
    x = torch.randn(args.tokens, in_f, device=device)
    gy = torch.randn(args.tokens, out_f, device=device)
    rows = []
    for precision in args.precisions:
        def fwd(module):
            def run():
                with torch.no_grad(), _autocast(device, precision):
                    module(x)
            return run

        def fwd_bwd(module):
            xg = x.detach().requires_grad_(True)

            def run():
                with _autocast(device, precision):
                    y = module(xg)
                y.backward(gy.to(y.dtype))
                for p in module.parameters():
                    p.grad = None
                xg.grad = None
            return run

        candidates = {}
        for label, module in (("linear", plain), ("weightnorm", wn)):
            for kind, make in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                fn = make(module)
                for _ in range(args.warmup):
                    fn()
                inner = timing.calls_for(fn, args.sample_s, sync)
                candidates[(label, kind)] = (fn, inner)
        samples = timing.round_robin(
            {key: (lambda fn=fn, inner=inner: timing.time_once(fn, sync, inner)) for key, (fn, inner) in candidates.items()},
            args.repeats,
        )
        row = {"shape": [out_f, in_f], "tokens": args.tokens, "precision": precision}
        for (label, kind), s in samples.items():
            row[f"{label}_{kind}_s"] = s.stats()
        for kind in ("fwd", "fwd_bwd"):
            a, b = samples[("weightnorm", kind)], samples[("linear", kind)]
            row[f"ratio_{kind}"] = {"wall": timing.paired_ratio(a.wall, b.wall), "cpu": timing.paired_ratio(a.cpu, b.cpu)}
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.common_args(ap, repeats=7, warmup=2)
    ap.add_argument("--models", nargs="+", default=["llama_20m", "llama_60m"])
    ap.add_argument("--tokens", type=int, default=8 * 256, help="rows of the input batch (default 8 x 256)")
    ap.add_argument("--precisions", nargs="+", default=None, choices=PRECISIONS,
                    help="default: fp32 on CPU (bf16 matmuls are emulated, ~10-70x slower, on CPUs without "
                         "AVX512-BF16/AMX), fp32 and bf16 autocast on CUDA")
    ap.add_argument("--sample-s", type=float, default=0.1, help="each sample averages calls lasting about this long")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    env = timing.start(args, NAME, argv)
    device = torch.device(args.device)
    sync = timing.sync_for(device)
    if args.precisions is None:
        args.precisions = list(PRECISIONS) if device.type == "cuda" else ["fp32"]

    shapes, seen = [], set()
    for m in args.models:
        for s in unique_shapes(m):
            if s not in seen:
                seen.add(s)
                shapes.append((m, s))
    rows = []
    for model_name, shape in shapes:
        for row in bench_shape(shape, args, device, sync):
            row["model"] = model_name
            rows.append(row)

    settings = {k: (str(v) if k == "out_dir" else v) for k, v in vars(args).items() if k != "no_write"}
    payload = timing.result(NAME, env, settings, rows, started, notes=[
        "Input x: tokens x in_features, no bias; fwd under torch.no_grad; fwd_bwd: forward, backward of a fixed "
        "random output gradient, then the gradients cleared.",
        "ratio_*: WeightNormLinear / nn.Linear per round (timed back to back), median [min, max].",
    ])
    ms = 1e3
    w = lambda d: d["wall"]  # noqa: E731
    table = timing.markdown_table(
        ["model", "shape (out x in)", "precision", "Linear fwd ms", "WN fwd ms", "ratio fwd", "Linear fwd+bwd ms",
         "WN fwd+bwd ms", "ratio fwd+bwd", "ratio fwd+bwd (CPU time)"],
        [[r["model"], f"{r['shape'][0]} x {r['shape'][1]}", r["precision"], timing.fmt(w(r["linear_fwd_s"]), ms),
          timing.fmt(w(r["weightnorm_fwd_s"]), ms), timing.fmt(w(r["ratio_fwd"])),
          timing.fmt(w(r["linear_fwd_bwd_s"]), ms), timing.fmt(w(r["weightnorm_fwd_bwd_s"]), ms),
          timing.fmt(w(r["ratio_fwd_bwd"])), timing.fmt(r["ratio_fwd_bwd"]["cpu"])] for r in rows],
        title=f"WeightNormLinear vs nn.Linear on {args.tokens} tokens, wall time median [min, max] of {args.repeats}",
    )
    return timing.finish(payload, args, keys={"rows": lambda r: f"{r['shape'][0]}x{r['shape'][1]}/{r['precision']}"},
                         tables=[table])


if __name__ == "__main__":
    main()
