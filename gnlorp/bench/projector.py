"""Projector refresh: exact SVD (torch.linalg.svd) against randomized SVD (torch.svd_lowrank with q = 2r,
niter = 2, as gnlorp/optim/projector.py does), per target-matrix shape of LLaMA-20M / 60M and rank:
time of `compute_projection` (what a refresh step runs per matrix) and the quality of the randomized
subspace, the captured gradient energy

    ||P^T G||^2 / ||P_exact^T G||^2      (left side; ||G Q^T||^2 / ||G Q_exact^T||^2 on the right side)

on real gradients (every target matrix of the LLaMA after a few AdamW steps on random tokens) and on
random Gaussian matrices (a flat spectrum: the worst case for a randomized range finder).

  python -m gnlorp.bench.projector
  python -m gnlorp.bench.projector --models llama_60m --ranks 64 128 256 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import timing
from .shapes import default_rank

NAME = "projector"


def default_ranks(model_name: str) -> list[int]:
    r = default_rank(model_name)
    return [r // 4, r // 2, r, 2 * r]


def real_gradients(model_name: str, args, device) -> dict[str, torch.Tensor]:
    """Gradients of every target matrix of `model_name` after `grad_steps` AdamW steps on random tokens."""
    from ..methods import target_linear_names
    from ..models import build_llama, llama_model_cfg

    model = build_llama(llama_model_cfg(model_name), seed=args.seed, device=device)
    names = target_linear_names(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed + 3)
    vocab = model.config.vocab_size
    for i in range(args.grad_steps + 1):
        ids = torch.randint(0, vocab, (args.grad_batch, args.grad_seq_len), generator=gen).to(device)
        model(input_ids=ids, labels=ids).loss.backward()
        if i < args.grad_steps:
            opt.step()
            opt.zero_grad(set_to_none=True)
    grads = {n: model.get_submodule(n).weight.grad.detach().clone() for n in names}
    del model, opt
    timing.free_memory()
    return grads


def captured(G: torch.Tensor, side: str, P, Q) -> float:
    low = P.T @ G if side == "left" else G @ Q.T
    return float(low.float().pow(2).sum())


def bench_model(model_name: str, ranks: list[int], args, device, sync) -> list[dict]:
    from ..optim.projector import compute_projection, projection_side

    grads = real_gradients(model_name, args, device)
    by_shape: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for n, g in grads.items():
        by_shape.setdefault(tuple(g.shape), []).append((n, g))
    gen = torch.Generator().manual_seed(args.seed + 11)
    rows = []
    for shape, mats in by_shape.items():
        side = projection_side(shape, "std")
        gauss = torch.randn(*shape, generator=gen).to(device)
        # exact SVD does not depend on the rank: one per matrix, sliced per rank
        U_all, Vh_all = {}, {}
        for n, g in mats + [("gaussian", gauss)]:
            U, _, Vh = torch.linalg.svd(g.float(), full_matrices=False)
            U_all[n], Vh_all[n] = U, Vh
        name0, g0 = mats[0]  # the timed matrix: the first layer's
        for rank in ranks:
            if rank > min(shape):
                continue
            seed = shape[0] * shape[1]

            def exact(g=g0, rank=rank):
                return compute_projection(g, rank, side, "exact", name0, seed=seed)

            def randomized(g=g0, rank=rank):
                return compute_projection(g, rank, side, "randomized", name0, seed=seed)

            for _ in range(args.warmup):
                exact()
                randomized()
            samples = timing.round_robin(
                {"exact": lambda: timing.time_once(exact, sync), "randomized": lambda: timing.time_once(randomized, sync)},
                args.repeats)

            def quality(n, g):
                P, Q = compute_projection(g, rank, side, "randomized", n, seed=seed)
                Pe = U_all[n][:, :rank] if side == "left" else None
                Qe = Vh_all[n][:rank, :] if side == "right" else None
                e_rand, e_exact = captured(g, side, P, Q), captured(g, side, Pe, Qe)
                return e_rand / e_exact, e_exact / float(g.float().pow(2).sum())

            real = [quality(n, g) for n, g in mats]
            gq = quality("gaussian", gauss)
            speed = timing.paired_ratio(samples["randomized"].wall, samples["exact"].wall)
            speed_cpu = timing.paired_ratio(samples["randomized"].cpu, samples["exact"].cpu)
            real_q = [q for q, _ in real]
            row = {
                "model": model_name, "shape": list(shape), "side": side, "rank": rank,
                "rank_fraction": rank / min(shape), "oversampled_q": min(2 * rank, *shape),
                "exact_s": samples["exact"].stats(), "randomized_s": samples["randomized"].stats(),
                "randomized_over_exact": {"wall": speed, "cpu": speed_cpu},
                "quality_real": {"min": min(real_q), "median": statistics.median_low(real_q),
                                 "max": max(real_q), "matrices": len(real_q)},
                "exact_energy_fraction_real": statistics.median_low([f for _, f in real]),
                "quality_gaussian": gq[0], "exact_energy_fraction_gaussian": gq[1],
            }
            row["randomized_recommended"] = bool(speed["median"] < 1.0 and speed["max"] < 1.05
                                                 and row["quality_real"]["min"] >= args.quality)
            rows.append(row)
    return rows


def crossover(rows: list[dict], quality: float) -> list[dict]:
    """Per shape: the ranks where randomized SVD is faster (median) and keeps >= `quality` of the exact
    subspace's energy on every real gradient, and the largest rank / min(m, n) where it still wins."""
    out = []
    for shape in dict.fromkeys(tuple(r["shape"]) for r in rows):
        rs = sorted((r for r in rows if tuple(r["shape"]) == shape), key=lambda r: r["rank"])
        faster = [r["rank"] for r in rs if r["randomized_over_exact"]["wall"]["median"] < 1.0]
        good = [r["rank"] for r in rs if r["quality_real"]["min"] >= quality]
        wins = [r["rank"] for r in rs if r["randomized_recommended"]]
        out.append({"shape": list(shape), "model": rs[0]["model"], "ranks": [r["rank"] for r in rs],
                    "faster_at": faster, "quality_ok_at": good, "recommended_at": wins,
                    "max_rank_fraction_recommended": max((w / min(shape) for w in wins), default=None)})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.common_args(ap, repeats=5, warmup=1)
    ap.add_argument("--models", nargs="+", default=["llama_20m", "llama_60m"])
    ap.add_argument("--ranks", nargs="+", type=int, default=None,
                    help="default: r/4, r/2, r, 2r around the model's default rank r (64 for 20M, 128 for 60M)")
    ap.add_argument("--quality", type=float, default=0.99,
                    help="captured-energy ratio the randomized subspace must keep to be recommended (default 0.99)")
    ap.add_argument("--grad-steps", type=int, default=2, help="AdamW steps before the gradients are taken")
    ap.add_argument("--grad-batch", type=int, default=4)
    ap.add_argument("--grad-seq-len", type=int, default=128)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    env = timing.start(args, NAME, argv)
    device = torch.device(args.device)
    sync = timing.sync_for(device)

    rows = []
    for model_name in args.models:
        t0 = time.perf_counter()
        rows += bench_model(model_name, args.ranks or default_ranks(model_name), args, device, sync)
        print(f"[{model_name}: {time.perf_counter() - t0:.0f} s]", flush=True)
    cross = crossover(rows, args.quality)

    settings = {k: (str(v) if k == "out_dir" else v) for k, v in vars(args).items() if k != "no_write"}
    payload = timing.result(NAME, env, settings, rows, started, crossover=cross, notes=[
        "exact_s / randomized_s: gnlorp.optim.projector.compute_projection on the first layer's real gradient "
        "(float32), round-robin; randomized_over_exact: their per-round time ratio.",
        "quality_*: captured-energy ratio of the randomized subspace to the exact top-r subspace (1 = as good); "
        "exact_energy_fraction_*: the share of ||G||^2 the exact top-r subspace captures.",
        f"randomized_recommended: faster in the median and at worst 5% slower in any round, and quality_real.min "
        f">= {args.quality}.",
    ])
    ms = 1e3
    table = timing.markdown_table(
        ["model", "shape", "side", "rank", "exact ms", "randomized ms", "rand / exact time", "quality real (min)",
         "quality gaussian", "exact top-r energy real / gaussian", "recommend randomized"],
        [[r["model"], f"{r['shape'][0]} x {r['shape'][1]}", r["side"], r["rank"], timing.fmt(r["exact_s"]["wall"], ms),
          timing.fmt(r["randomized_s"]["wall"], ms), timing.fmt(r["randomized_over_exact"]["wall"]),
          f"{r['quality_real']['median']:.4f} ({r['quality_real']['min']:.4f})", f"{r['quality_gaussian']:.4f}",
          f"{r['exact_energy_fraction_real']:.3f} / {r['exact_energy_fraction_gaussian']:.3f}",
          "yes" if r["randomized_recommended"] else "no"] for r in rows],
        title=f"Projector refresh per matrix, wall time median [min, max] of {args.repeats}",
    )
    ctable = timing.markdown_table(
        ["shape", "ranks tried", "randomized faster at", f"quality >= {args.quality} at", "recommended at",
         "max rank / min(m, n) recommended"],
        [[f"{c['shape'][0]} x {c['shape'][1]}", c["ranks"], c["faster_at"] or "-", c["quality_ok_at"] or "-",
          c["recommended_at"] or "-",
          f"{c['max_rank_fraction_recommended']:.3f}" if c["max_rank_fraction_recommended"] else "-"] for c in cross],
        title="Crossover: where randomized SVD is as good and faster",
    )
    return timing.finish(payload, args, keys={"rows": lambda r: f"{r['shape'][0]}x{r['shape'][1]}/r{r['rank']}"},
                         tables=[table, ctable])


if __name__ == "__main__":
    main()
