"""Optimizer step time on the target matrices of LLaMA-20M / 60M: torch AdamW, bitsandbytes AdamW8bit,
galore-torch's GaLoreAdamW, our GaLoreAdamW (32-bit, 8-bit, randomized SVD) and GradNormLoRP.

The parameters are the attention and MLP matrices of the transformer blocks (shapes from
gnlorp/conf/model/<name>.yaml; embeddings and the LM head excluded: they are dense AdamW in every method and
add the same time to all). Each optimizer is built the way training builds it: `gnlorp.methods`'
prepare/build_optimizer on a module holding exactly those Linear layers (GradNormLoRP: weight-normalized,
directions in the GaLore group, one magnitude vector per matrix on dense Adam); galore-torch gets the same
param groups. Gradients are fixed random tensors, shared by all optimizers.

Two kinds of step are timed, round-robin over the optimizers:
  steady   no projector refresh (step % T != 0)
  refresh  every projected matrix recomputes its projector by SVD (forced by moving the step counter to
           the next multiple of T, which is the only thing the refresh condition reads)
and the amortized cost at T is (refresh + (T - 1) * steady) / T.

  python -m gnlorp.bench.optimizer_step          # llama_20m (r 64) and llama_60m (r 128), T 200, 7 steady + 5 refresh samples
  python -m gnlorp.bench.optimizer_step --models llama_60m --rank 256 --repeats 9 --optimizers galore_torch galore
  python -m gnlorp.bench.optimizer_step --device cuda --dtype bf16 --models llama_60m llama_130m

A steady sample is the mean of as many back-to-back steps as last about --sample-s (step counters are kept
away from multiples of T meanwhile). Wall time (perf_counter) is the figure; process CPU time is recorded too.
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import torch
from torch import nn

from . import timing
from .shapes import block_shapes, default_rank

NAME = "optimizer_step"
OPTIMIZERS = ("adamw", "adamw8bit", "galore_torch", "galore", "galore8bit", "galore_rsvd", "gradnormlorp",
              "gradnormlorp_rsvd")
DEFAULT_OPTIMIZERS = OPTIMIZERS[:-1]
# refresh steps cost seconds each at 60M (one SVD per matrix): by default they are timed for the optimizers
# the targets and the SVD choice are about; galore8bit runs the same SVDs as galore
DEFAULT_REFRESH = ("galore_torch", "galore", "galore_rsvd", "gradnormlorp", "gradnormlorp_rsvd")
LABELS = {
    "adamw": "torch.optim.AdamW",
    "adamw8bit": "bitsandbytes AdamW8bit",
    "galore_torch": "galore_torch.GaLoreAdamW",
    "galore": "ours GaLoreAdamW (exact SVD)",
    "galore8bit": "ours GaLoreAdamW8bit (exact SVD)",
    "galore_rsvd": "ours GaLoreAdamW (randomized SVD)",
    "gradnormlorp": "ours GradNormLoRP (exact SVD)",
    "gradnormlorp_rsvd": "ours GradNormLoRP (randomized SVD)",
}


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parts = name.split(".")
    for part in parts[:-1]:
        if not hasattr(root, part):
            setattr(root, part, nn.Module())
        root = getattr(root, part)
    setattr(root, parts[-1], module)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def block_stack(model_name: str, seed: int = 0, device="cpu", dtype=torch.float32) -> nn.Module:
    """A module holding only the target Linear layers of `model_name`, under their real names (so the
    methods' default target pattern picks them all)."""
    gen = torch.Generator().manual_seed(seed)
    root = nn.Module()
    for name, (out, inp) in block_shapes(model_name):
        lin = nn.Linear(inp, out, bias=False, device="meta")
        lin.weight = nn.Parameter((torch.randn(out, inp, generator=gen) * 0.02).to(device=device, dtype=dtype))
        _set_submodule(root, name, lin)
    return root


class Built(NamedTuple):
    optimizer: object
    named: list
    model: nn.Module


def build(kind: str, model_name: str, rank: int, T: int, *, lr: float, wd: float, scale: float, seed: int, device,
          dtype=torch.float32) -> Built:
    """The optimizer, [(name, param)] and module for one kind, on a fresh copy of the matrices."""
    from ..methods import MethodConfig, get_method

    model = block_stack(model_name, seed, device, dtype)
    method = {"adamw": "full", "adamw8bit": "full", "galore_torch": "galore"}.get(kind, kind.split("_")[0].removesuffix("8bit"))
    cfg = MethodConfig(
        name=method, lr=lr, weight_decay=wd, eps=1e-6, rank=rank, scale=scale, update_proj_gap=T, proj_type="std",
        svd="randomized" if kind.endswith("_rsvd") else "exact", optim_bits=8 if "8bit" in kind else 32,
    )
    impl = get_method(method)
    model = impl.prepare(model, cfg)
    if kind == "galore_torch":
        import galore_torch

        mats = [p for p in model.parameters()]
        opt = galore_torch.GaLoreAdamW(
            [{"params": mats, "rank": rank, "update_proj_gap": T, "scale": scale, "proj_type": "std", "weight_decay": wd}],
            lr=lr, eps=1e-6, weight_decay=wd, no_deprecation_warning=True,
        )
    else:
        opt = impl.build_optimizer(model, cfg)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return Built(opt, named, model)


def grads_for(model_name: str, seed: int, device, dtype=torch.float32) -> dict:
    """Random gradients keyed by (module name, kind): one for each matrix and one for each magnitude."""
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for name, (o, i) in block_shapes(model_name):
        out[(name, "matrix")] = (torch.randn(o, i, generator=gen) * 1e-3).to(device=device, dtype=dtype)
        out[(name, "vector")] = (torch.randn(o, generator=gen) * 1e-3).to(device=device, dtype=dtype)
    return out


def attach_grads(named, grads) -> None:
    for pname, p in named:
        module = pname.rsplit(".", 1)[0]
        p.grad = grads[(module, "matrix" if p.dim() == 2 else "vector")].to(p.dtype)  # a magnitude g is float32


def force_refresh(opt, T: int) -> None:
    """Move every step counter to the next multiple of T: the next step refreshes every projector (ours and
    galore-torch both refresh when state['step'] % T == 0); bias corrections change negligibly."""
    for state in opt.state.values():
        if isinstance(state.get("step"), int):
            state["step"] = T * (state["step"] // T + 1)


def state_bytes(opt) -> int:
    """Optimizer-state tensor bytes; for galore-torch also its projector matrices (held in an object)."""
    from ..state_bytes import optimizer_state_bytes

    total = optimizer_state_bytes(opt)
    for state in opt.state.values():
        proj = state.get("projector")
        mats = getattr(proj, "ortho_matrix", None)
        for m in (mats if isinstance(mats, (list, tuple)) else [mats]):
            if torch.is_tensor(m):
                total += m.numel() * m.element_size()
    return total


def rewind(opt, T: int, steps: int) -> None:
    """Keep the next `steps` steps steady: a counter that would reach a multiple of T moves to just past
    the next one (the projector is then one period old, which changes nothing in a step's cost)."""
    for state in opt.state.values():
        t = state.get("step")
        if isinstance(t, int) and t % T + steps >= T:
            state["step"] = T * (t // T + 1) + 1


def bench_model(model_name: str, kinds, rank: int, T: int, args, *, sync) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    grads = grads_for(model_name, args.seed, device, dtype)
    built, inner = {}, {}
    for kind in kinds:
        opt, named, model = build(kind, model_name, rank, T, lr=args.lr, wd=args.weight_decay, scale=args.scale,
                                  seed=args.seed, device=device, dtype=dtype)
        attach_grads(named, grads)
        opt.step()  # initializes the state and the projectors (a refresh); not timed
        for _ in range(args.warmup):
            opt.step()
        inner[kind] = min(T - 2, timing.calls_for(opt.step, args.sample_s, sync))
        built[kind] = (opt, model)
    sync()

    def steady(kind):
        opt = built[kind][0]

        def run():
            rewind(opt, T, inner[kind])
            return timing.time_once(opt.step, sync, inner[kind])
        return run

    def refresh(kind):
        opt = built[kind][0]

        def run():
            force_refresh(opt, T)
            return timing.time_once(opt.step, sync)
        return run

    projected = [k for k in kinds if k not in ("adamw", "adamw8bit")]
    steady_s = timing.round_robin({k: steady(k) for k in kinds}, args.repeats)
    refresh_s = timing.round_robin({k: refresh(k) for k in projected if k in args.refresh_optimizers},
                                   args.refresh_repeats)

    rows = []
    shapes = block_shapes(model_name)
    for kind in kinds:
        st, rf = steady_s[kind], refresh_s.get(kind)
        row = {
            "model": model_name, "optimizer": kind, "label": LABELS[kind], "rank": rank if kind in projected else None,
            "T": T, "matrices": len(shapes), "matrix_params": sum(o * i for _, (o, i) in shapes),
            "state_bytes": state_bytes(built[kind][0]), "steps_per_steady_sample": inner[kind],
            "steady_s": st.stats(),
            "refresh_s": rf.stats() if rf else None,
            "amortized_s": _amortized(st, rf, T) if rf else (st.stats() if kind not in projected else None),
        }
        rows.append(row)
    del built
    timing.free_memory()
    return {"rows": rows, "steady": steady_s, "refresh": refresh_s}


def _amortized(st: timing.Samples, rf: timing.Samples, T: int) -> dict:
    n = min(len(st), len(rf))
    return {clock: timing.amortized(getattr(rf, clock)[:n], getattr(st, clock)[:n], T) for clock in ("wall", "cpu")}


def _amortized_list(st: timing.Samples, rf: timing.Samples | None, T: int, clock: str, n: int) -> list[float]:
    steady = getattr(st, clock)[:n]
    if rf is None:  # a dense optimizer refreshes nothing: amortized = steady
        return steady
    return [(r + (T - 1) * s) / T for r, s in zip(getattr(rf, clock)[:n], steady)]


PAIRS = [("galore", "galore_torch", 1.0), ("gradnormlorp", "galore", 1.15), ("galore8bit", "galore", None),
         ("galore_rsvd", "galore", None), ("gradnormlorp_rsvd", "galore_rsvd", 1.15), ("galore", "adamw", None),
         ("gradnormlorp", "adamw", None), ("adamw8bit", "adamw", None)]


def ratios(model_name: str, res: dict, T: int) -> list[dict]:
    """Paired ratios (both timed in the same round) of the figures the targets are about."""
    st, rf = res["steady"], res["refresh"]
    out = []
    for a, b, target in PAIRS:
        if a not in st or b not in st:
            continue
        entry = {"model": model_name, "numer": a, "denom": b, "target_max": target}
        for clock in ("wall", "cpu"):
            entry.setdefault("steady", {})[clock] = timing.paired_ratio(getattr(st[a], clock), getattr(st[b], clock))
            if a in rf and b in rf:
                entry.setdefault("refresh", {})[clock] = timing.paired_ratio(getattr(rf[a], clock), getattr(rf[b], clock))
            dense = ("adamw", "adamw8bit")
            if (a in rf or a in dense) and (b in rf or b in dense) and not (a in dense and b in dense):
                n = min(len(st[a]), len(st[b]), *(len(rf[k]) for k in (a, b) if k in rf))
                entry.setdefault("amortized", {})[clock] = timing.paired_ratio(
                    _amortized_list(st[a], rf.get(a), T, clock, n), _amortized_list(st[b], rf.get(b), T, clock, n))
        if target is not None:
            figure = entry.get("amortized", entry["steady"])["wall"]
            entry["met"] = bool(figure["median"] <= target)
        out.append(entry)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.common_args(ap, repeats=7, warmup=1)
    ap.add_argument("--models", nargs="+", default=["llama_20m", "llama_60m"])
    ap.add_argument("--rank", type=int, default=None, help="default: 64 for llama_20m, 128 for llama_60m")
    ap.add_argument("--T", type=int, default=200, help="update_proj_gap (default 200)")
    ap.add_argument("--refresh-repeats", type=int, default=5, help="refresh-step samples (default 5)")
    ap.add_argument("--sample-s", type=float, default=0.2,
                    help="a steady sample averages as many back-to-back steps as last about this long (default 0.2 s)")
    ap.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS), choices=OPTIMIZERS,
                    help=f"default: all but gradnormlorp_rsvd ({', '.join(OPTIMIZERS)})")
    ap.add_argument("--refresh-optimizers", nargs="+", default=list(DEFAULT_REFRESH), choices=OPTIMIZERS,
                    help="whose refresh step is timed (default: %(default)s; galore8bit runs galore's SVDs)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                    help="weights, gradients and moments (bf16 as GaLore's GPU pre-training; default fp32)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--scale", type=float, default=0.25, help="GaLore alpha (C4 recipe: 0.25)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    env = timing.start(args, NAME, argv)
    sync = timing.sync_for(args.device)

    rows, ratio_rows = [], []
    for model_name in args.models:
        rank = args.rank or default_rank(model_name)
        t0 = time.perf_counter()
        res = bench_model(model_name, args.optimizers, rank, args.T, args, sync=sync)
        rows += res["rows"]
        ratio_rows += ratios(model_name, res, args.T)
        print(f"[{model_name}: {time.perf_counter() - t0:.0f} s]", flush=True)

    settings = {k: (str(v) if k == "out_dir" else v) for k, v in vars(args).items() if k not in ("no_write",)}
    settings["ranks"] = {m: args.rank or default_rank(m) for m in args.models}
    payload = timing.result(
        NAME, env, settings, rows, started, ratios=ratio_rows,
        notes=["Parameters: the attention and MLP matrices of the transformer blocks only (embeddings, LM head and "
               "norms excluded: dense AdamW in every method). GradNormLoRP adds one magnitude vector per matrix.",
               "refresh_s: a step in which every projected matrix recomputes its projector; amortized_s: "
               "(refresh + (T-1) steady) / T over paired samples.",
               "Ratios are per round (both optimizers timed back to back), then median [min, max]."],
    )
    ms = 1e3
    w = lambda d: d and d["wall"]  # noqa: E731
    table = timing.markdown_table(
        ["model", "optimizer", "rank", "steady ms", "refresh ms", f"amortized ms (T={args.T})", "state MiB"],
        [[r["model"], r["label"], r["rank"] or "-", timing.fmt(w(r["steady_s"]), ms), timing.fmt(w(r["refresh_s"]), ms),
          timing.fmt(w(r["amortized_s"]), ms), f"{r['state_bytes'] / 2**20:.1f}"] for r in rows],
        title=f"Optimizer step wall time, median [min, max] of {args.repeats} steady and {args.refresh_repeats} "
              f"refresh round-robin samples",
    )
    rtable = timing.markdown_table(
        ["model", "ratio", "steady", "refresh", "amortized", "amortized (CPU time)", "target", "met"],
        [[r["model"], f"{r['numer']} / {r['denom']}", timing.fmt(w(r["steady"])), timing.fmt(w(r.get("refresh"))),
          timing.fmt(w(r.get("amortized"))), timing.fmt((r.get("amortized") or r["steady"])["cpu"]),
          f"<= {r['target_max']}" if r["target_max"] else "-",
          {True: "yes", False: "NO"}.get(r.get("met"), "-")] for r in ratio_rows],
        title="Paired time ratios (wall unless noted), median [min, max] over rounds",
    )
    return timing.finish(payload, args, keys={"rows": lambda r: f"{r['model']}/{r['optimizer']}",
                                              "ratios": lambda r: f"{r['model']}/{r['numer']}/{r['denom']}"}, tables=[table, rtable])


if __name__ == "__main__":
    main()
