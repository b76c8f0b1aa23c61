"""End-to-end training throughput (tokens/s) and memory of each registered method (variants
such as DoRA left out) on a LLaMA of gnlorp/conf/model, with random token data (no dataset needed).

One training step is what gnlorp.train does: forward (optionally under autocast), backward, gradient
clipping to 1.0, optimizer step, zero_grad. All methods are built up front and stepped round-robin (one
step of each in turn), so load from other processes falls on all of them alike, and the ratio to full
AdamW is taken per round. The warmup steps include the first projector computation; with T = 200 no
refresh lands in the timed steps. The refresh step is then timed on its own (the step counters moved to
the next multiple of T) and the amortized throughput at T is tokens / ((refresh + (T - 1) steady) / T).

Memory, per method:
  tensor bytes  exact: parameters (all, frozen included) + gradients (after backward) + optimizer state
                (gnlorp.state_bytes.optimizer_state_bytes)
  peak          measured in a fresh subprocess per method (so methods do not see each other's memory):
                CPU: peak RSS of that process (sysinfo.PeakMemory; includes Python and torch themselves,
                reported with the RSS before the model was built); CUDA: torch's max allocated bytes.

  python -m gnlorp.bench.end_to_end                        # CPU: llama_20m, fp32, 8 x 256, 2 warmup + 5 timed
  python -m gnlorp.bench.end_to_end --warmup 3 --steps 10 --precision bf16
  python -m gnlorp.bench.end_to_end --device cuda          # llama_60m and llama_130m, bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

from .. import CONF_DIR
from . import timing
from ..methods import BASELINE, SPECS, is_low_rank
from .shapes import default_rank

NAME = "end_to_end"
METHODS = tuple(n for n, s in SPECS.items() if s.variant_of is None)  # the registry's, variants (DoRA) left out


def c4_lr(method: str) -> float:
    """The C4 recipe's learning rate of a method (gnlorp/conf/task/c4.yaml)."""
    from omegaconf import OmegaConf

    table = OmegaConf.load(CONF_DIR / "task" / "c4.yaml").task.lr
    return float(table[method])


# ------------------------------------------------------------------------------------------- one method
def build_method(method: str, args, model_name: str, device):
    from ..methods import MethodConfig, get_method
    from ..models import build_llama, llama_model_cfg

    model = build_llama(llama_model_cfg(model_name), seed=args.seed, device=device)
    if args.precision == "bf16" and device.type == "cuda":
        model.to(dtype=torch.bfloat16)  # as the runner does on CUDA (precision=bf16)
    rank = args.rank or default_rank(model_name)
    cfg = MethodConfig(name=method, lr=c4_lr(method), rank=rank, scale=args.scale, update_proj_gap=args.T,
                       svd=args.svd, optim_bits=args.optim_bits)
    impl = get_method(method)
    model = impl.prepare(model, cfg)
    model.train()
    return model, impl.build_optimizer(model, cfg)


def make_batches(args, vocab: int, device, n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(args.seed + 7)
    return [torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen).to(device) for _ in range(n)]


class Stepper:
    """One method's model, optimizer and training step (gnlorp.train's, without the LR schedule)."""

    def __init__(self, method: str, args, model_name: str, device):
        self.method, self.device, self.args = method, device, args
        self.model, self.optimizer = build_method(method, args, model_name, device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        vocab = self.model.get_input_embeddings().weight.shape[0]
        self.batches = make_batches(args, vocab, device)
        self.calls = 0
        self.sync = timing.sync_for(device)
        self.last_grad_bytes = 0

    def autocast(self):
        if self.args.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def step(self, count_grads: bool = False) -> None:
        ids = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        with self.autocast():
            loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        if count_grads:
            self.last_grad_bytes = _unique_bytes(p.grad for p in self.model.parameters() if p.grad is not None)
        if self.args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.args.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed(self) -> tuple[float, float]:
        return timing.time_once(self.step, self.sync)

    def timed_refresh(self) -> tuple[float, float]:
        from ..optim.layerwise import base_optimizer

        opt = base_optimizer(self.optimizer)
        for state in opt.state.values():
            if isinstance(state.get("step"), int):
                state["step"] = self.args.T * (state["step"] // self.args.T + 1)
        return timing.time_once(self.step, self.sync)

    def projects(self) -> bool:
        from ..optim.layerwise import base_optimizer

        return any("rank" in g for g in base_optimizer(self.optimizer).param_groups)

    def tensor_bytes(self) -> dict:
        """Exact bytes of parameters (frozen included), gradients and optimizer state. Gradients: one per
        trainable parameter, of its shape and dtype (the memory probe counts the real ones after backward)."""
        from ..state_bytes import optimizer_state_bytes

        params = _unique_bytes(self.model.parameters())
        grads = sum(p.numel() * p.element_size() for p in self.params)
        state = optimizer_state_bytes(self.optimizer)
        return {"parameters": params, "gradients": grads, "optimizer_state": state, "total": params + grads + state}


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        s = t.untyped_storage()
        key = (s.data_ptr(), str(t.device))
        if key not in seen:
            seen.add(key)
            total += s.nbytes()
    return total


# ------------------------------------------------------------------------------------------- memory probe
def probe(args) -> dict:
    """Runs in a fresh process: the peak memory of building one method and taking `probe_steps` steps."""
    import peft  # noqa: F401  (imported before the reset: the libraries' own memory is not the method's)
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    from ..sysinfo import PeakMemory

    device = torch.device(args.device)
    peak = PeakMemory(device)
    peak.reset()
    stepper = Stepper(args.probe, args, args.models[0], device)
    for i in range(args.probe_steps):
        stepper.step(count_grads=i == args.probe_steps - 1)
    stepper.sync()
    return {"peak": peak.snapshot(), "gradient_bytes_counted": stepper.last_grad_bytes}


def run_probe(method: str, model_name: str, args) -> dict | None:
    cmd = [sys.executable, "-m", "gnlorp.bench.end_to_end", "--probe", method, "--models", model_name,
           "--threads", str(args.threads), "--device", args.device, "--precision", args.precision,
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--T", str(args.T),
           "--svd", args.svd, "--optim-bits", str(args.optim_bits), "--scale", str(args.scale),
           "--grad-clip", str(args.grad_clip), "--seed", str(args.seed), "--probe-steps", str(args.probe_steps)]
    if args.rank:
        cmd += ["--rank", str(args.rank)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"memory probe of {method} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------- benchmark
def bench_model(model_name: str, args, device) -> tuple[list[dict], list[dict]]:
    steppers = {m: Stepper(m, args, model_name, device) for m in args.methods}
    tokens = args.batch_size * args.seq_len
    for _ in range(args.warmup):  # the first step computes every projector
        for s in steppers.values():
            s.step()
    steady = timing.round_robin({m: s.timed for m, s in steppers.items()}, args.steps)
    refresh = timing.round_robin({m: s.timed_refresh for m, s in steppers.items() if s.projects()}, args.refresh_steps)
    rows = []
    for m, s in steppers.items():
        st = steady[m]
        rf = refresh.get(m)
        row = {
            "model": model_name, "method": m, "rank": (args.rank or default_rank(model_name)) if is_low_rank(m) else None,
            "tokens_per_step": tokens,
            "step_s": st.stats(),
            "tokens_per_s": timing.stats(tokens / x for x in st.wall),
            "refresh_step_s": rf.stats() if rf else None,
        }
        med_refresh = timing.stats(rf.wall)["median"] if rf else None
        amort = [((med_refresh if rf else x) + (args.T - 1) * x) / args.T for x in st.wall]
        row["amortized_tokens_per_s"] = timing.stats(tokens / a for a in amort)
        row["tensor_bytes"] = s.tensor_bytes()
        rows.append(row)
    ratios = []
    if BASELINE in steady:
        for m in steppers:
            if m == BASELINE:
                continue
            r = {"model": model_name, "method": m, "vs": BASELINE,
                 # tokens/s ratio = inverse step-time ratio, per round
                 "tokens_per_s_ratio": timing.paired_ratio(steady[BASELINE].wall, steady[m].wall),
                 "tokens_per_s_ratio_cpu": timing.paired_ratio(steady[BASELINE].cpu, steady[m].cpu)}
            row = next(x for x in rows if x["method"] == m)
            full_row = next(x for x in rows if x["method"] == BASELINE)
            r["amortized_tokens_per_s_ratio"] = timing.paired_ratio(
                row["amortized_tokens_per_s"]["samples"], full_row["amortized_tokens_per_s"]["samples"])
            target = SPECS[m].throughput_target
            if target is not None:
                r["target_min"] = target
                r["met"] = bool(r["amortized_tokens_per_s_ratio"]["median"] >= target)
            ratios.append(r)
    del steppers
    timing.free_memory()
    if not args.no_memory:
        for row in rows:
            res = run_probe(row["method"], model_name, args)
            row["peak_memory"] = res and res["peak"]
            if res:
                row["tensor_bytes"]["gradients_counted_after_backward"] = res["gradient_bytes_counted"]
    return rows, ratios


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.common_args(ap, repeats=5, warmup=2)
    ap.add_argument("--models", nargs="+", default=None, help="default: llama_20m on CPU; llama_60m llama_130m on CUDA")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per method (default: --repeats)")
    ap.add_argument("--refresh-steps", type=int, default=1, help="timed projector-refresh steps (default 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="auto: fp32 on CPU (bf16 matmuls are emulated, ~30x slower, on CPUs without AVX512-BF16), "
                         "bf16 on CUDA (bf16 weights and autocast, as the runner does)")
    ap.add_argument("--rank", type=int, default=None, help="default: 64 for llama_20m, 128 for llama_60m and up")
    ap.add_argument("--T", type=int, default=200)
    ap.add_argument("--svd", choices=("exact", "randomized", "auto"), default="auto")
    ap.add_argument("--optim-bits", type=int, choices=(8, 32), default=32)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-method peak-memory subprocesses")
    ap.add_argument("--probe-steps", type=int, default=2, help="steps a memory subprocess takes (default 2)")
    ap.add_argument("--probe", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    if args.models is None:
        args.models = ["llama_60m", "llama_130m"] if device.type == "cuda" else ["llama_20m"]
    args.steps = args.steps or args.repeats

    if args.probe:
        timing.set_threads(None if args.threads == 0 else args.threads)
        torch.manual_seed(args.seed)
        print(json.dumps(probe(args)))
        return {}

    started = time.perf_counter()
    env = timing.start(args, NAME, argv)
    rows, ratio_rows = [], []
    for model_name in args.models:
        t0 = time.perf_counter()
        r, q = bench_model(model_name, args, device)
        rows += r
        ratio_rows += q
        print(f"[{model_name}: {time.perf_counter() - t0:.0f} s]", flush=True)

    settings = {k: (str(v) if k == "out_dir" else v) for k, v in vars(args).items() if k not in ("no_write", "probe")}
    payload = timing.result(NAME, env, settings, rows, started, ratios=ratio_rows, notes=[
        "Random token data; lr of the C4 recipe per method, no LR schedule (it does not change the cost).",
        "step_s / tokens_per_s: steady steps (no projector refresh), round-robin over methods. refresh_step_s: a "
        "step in which every projector is recomputed. amortized: (median refresh + (T-1) steady) / T per sample.",
        "tokens_per_s_ratio: method / full per round (inverse step-time ratio).",
        "peak_memory: a fresh process per method; CPU figures are whole-process RSS (Python + torch included, "
        "start_rss_bytes is before the model was built).",
    ])
    mib = 2**20
    def peak(r):
        pm = r.get("peak_memory")
        if not pm:
            return "-"
        if pm["kind"] == "cuda":
            return f"{pm['max_allocated_bytes'] / mib:,.0f} (alloc)"
        return f"{pm['peak_rss_bytes'] / mib:,.0f} (+{(pm['peak_rss_bytes'] - (pm['start_rss_bytes'] or 0)) / mib:,.0f})"
    table = timing.markdown_table(
        ["model", "method", "rank", "step s", "tokens/s", "refresh step s", f"amortized tokens/s (T={args.T})",
         "params+grads+state MiB", "optimizer state MiB", "peak MiB (over start)"],
        [[r["model"], r["method"], r["rank"] or "-", timing.fmt(r["step_s"]["wall"]), timing.fmt(r["tokens_per_s"]),
          timing.fmt(r["refresh_step_s"]["wall"]) if r["refresh_step_s"] else "-", timing.fmt(r["amortized_tokens_per_s"]),
          f"{r['tensor_bytes']['total'] / mib:,.1f}", f"{r['tensor_bytes']['optimizer_state'] / mib:,.1f}", peak(r)]
         for r in rows],
        title=f"Training throughput, {args.batch_size} x {args.seq_len} tokens/step, {args.precision}, median [min, max] "
              f"of {args.steps} steps after {args.warmup} warmup",
    )
    rtable = timing.markdown_table(
        ["model", "method / full", "tokens/s ratio", "tokens/s ratio (CPU time)", "amortized ratio", "target", "met"],
        [[r["model"], r["method"], timing.fmt(r["tokens_per_s_ratio"]), timing.fmt(r["tokens_per_s_ratio_cpu"]),
          timing.fmt(r["amortized_tokens_per_s_ratio"]), f">= {r['target_min']}" if r.get("target_min") else "-",
          {True: "yes", False: "NO"}.get(r.get("met"), "-")] for r in ratio_rows],
        title="Throughput relative to full AdamW, per round, median [min, max]",
    )
    return timing.finish(payload, args, keys={"rows": lambda r: f"{r['model']}/{r['method']}",
                                              "ratios": lambda r: f"{r['model']}/{r['method']}"}, tables=[table, rtable])


if __name__ == "__main__":
    main()
