"""`make gpu-table`: the equal-tuning protocol of the CPU sweeps (every method's learning-rate grid on selection
seed 0, chosen on a held-out selection split; then reported seeds 1, 2, 3 at the chosen rate with
`train.lr_choice=selection`) on one GPU, inside a fixed wall-time budget (9 minutes by default):

  python -m gnlorp.gpu_table                   # plan, print the estimate, run, build the tables
  python -m gnlorp.gpu_table --plan-only       # the plan and its estimate only
  python -m gnlorp.gpu_table --model roberta-base --tasks rte --epochs 3   # a plan of your own (checked)

Parts: GLUE on the **full** train sets (sweeps/gpu_glue.yaml, gnlorp/conf/experiment/glue_gpu.yaml: MiniLM-L6
offline by default, `--model roberta-base` where the hub is reachable) for full, lora, galore, gradnormlorp on the
tasks the plan affords; C4 LLaMA-60M short runs (sweeps/gpu_c4.yaml, gnlorp/conf/experiment/c4_llama_60m_gpu.yaml)
for all nine C4 methods (sweeps/paper_c4.yaml's: full, lora, galore, gradnormlorp, relora, switchlora, apollo,
apollo_mini, fira; `--c4-methods` runs a subset). A cost model (THROUGHPUT, START_S, PROCESS_S below) estimates each
run's seconds from its workload; `choose_plan` takes the largest plan whose estimate fits the budget; the plan and
the estimate per part are printed before anything starts, and a plan over the budget is refused (one line, exit 2).
The GLUE lane and the C4 lane run side by side on the one GPU (small models leave most of it idle). A hard stop
ends a lane at the budget. Results go to results/gpu_table/<device>/ (never mixed with the CPU results in results/),
its tables to results/gpu_table/<device>/tables/ (`python -m gnlorp.tables --results results/gpu_table/<device>`
builds them again).

Without CUDA (or with --dry) the same plan runs shrunk to tiny sizes on the CPU (BERT-tiny on 64 rows of the plan's
first GLUE task, LLaMA-tiny for 2 steps): every part, the selection and the tables, into --out or a temporary
folder, never results/. tests/e2e/test_gpu_table.py runs it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .lr_selection import SELECTION_SEED  # the grid's seed, never reported

ROOT = Path(__file__).resolve().parent.parent          # the checkout: run.py and sweeps/ live here
BUDGET_S = 9 * 60
GRID = ("0.3", "1", "3")                               # train.lr_factor: the recipe's rate x these
REPORTED_SEEDS = (1, 2, 3)
GLUE_METHODS = ("full", "lora", "galore", "gradnormlorp")
C4_METHODS = ("full", "lora", "galore", "gradnormlorp", "relora", "switchlora", "apollo", "apollo_mini", "fira")
PROJECTED = ("galore", "gradnormlorp", "fira")         # methods that refresh a projector by an SVD per target
# (APOLLO and APOLLO-Mini redraw a seeded Gaussian projector every T steps instead: one randn per target, no SVD,
# counted in their step cost)


# --------------------------------------------------------------------------------------------------- the cost model
# Assumed throughput on one H100/H200-class GPU (bf16 autocast, eager PyTorch, no torch.compile), deliberately
# conservative: no GPU run of this project has been measured yet (`make gpu-check` measures LLaMA-60M's tokens/s).
# Basis: training costs ~6 N FLOPs per token (N parameters); the H100's dense bf16 peak is ~990 TFLOP/s (H200: the
# same chip, faster memory). Small models in eager mode are bound by kernel launches and Python, not by FLOPs, so:
#   MiniLM-L6 (N = 22.7M, 1.4e8 FLOP/token): 150,000 padded tokens/s forward+backward = 2e13 FLOP/s, ~2% of peak;
#   RoBERTa-base (N = 125M, 7.5e8 FLOP/token): 50,000 tokens/s = 3.8e13 FLOP/s, ~4% of peak;
#   LLaMA-60M (N = 58M, ~3.5e8 FLOP/token at 256 tokens): 150,000 tokens/s = 5e13 FLOP/s, ~5% of peak
#   (nanoGPT's 124M trains at ~160K tokens/s on one A100 in eager mode; an H100 is 2-3x an A100);
# evaluation (forward only, no optimizer) at 3x the training rate. On top, a fixed cost per optimizer step for the
# launches of the forward, backward and optimizer (AdamW over every tensor; GaLore's per-target Python loop and
# projections; SwitchLoRA's candidate swaps with candidates held in CPU memory), ~3x what such steps take, and a
# projector refresh (a torch.linalg.svd per target matrix, ~5-10 ms each on cuSOLVER) for GaLore, GradNormLoRP and
# Fira. APOLLO and APOLLO-Mini: GaLore's per-target loop (project the gradient, Adam moments at the rank) plus a norm
# per channel (per tensor for Mini) and the norm-growth limiter, ~10 ms more a step; their projector is redrawn from
# its seed (a randn per target every T steps, well under a millisecond each), so no refresh cost. Fira: GaLore's step
# plus the residual G - P P^T G, its per-channel scaling and the limiter (~10 ms more), and GaLore's SVD refresh.


@dataclass(frozen=True)
class Throughput:
    train_tokens_per_s: float
    eval_tokens_per_s: float
    step_s: dict                  # method -> seconds per optimizer step beyond the tokens' cost
    refresh_s: float              # one projector refresh of every target (an SVD each: PROJECTED)


THROUGHPUT = {
    "minilm": Throughput(150_000, 450_000, {"full": 0.025, "lora": 0.025, "galore": 0.035, "gradnormlorp": 0.035},
                         0.3),
    "roberta-base": Throughput(50_000, 150_000, {"full": 0.05, "lora": 0.05, "galore": 0.08, "gradnormlorp": 0.08},
                               1.0),
    "llama_60m": Throughput(150_000, 450_000, {"full": 0.03, "lora": 0.03, "relora": 0.03, "galore": 0.05,
                                               "gradnormlorp": 0.05, "switchlora": 0.08, "apollo": 0.06,
                                               "apollo_mini": 0.06, "fira": 0.06}, 0.5),
}
START_S = 4.0        # per job of a multirun: compose and check, data fingerprint, model build/load, tokenize, record
PROCESS_S = 25.0     # per multirun process: Python, torch, transformers and Hydra imports, the CUDA context
CONTENTION = 1.25    # two lanes sharing the GPU and 16 cores: each runs at 80% of its speed alone
TABLES_S = 15.0      # building the tables at the end (no memory table)

# GLUE tasks from ../shared/data/glue_data (the CPU plan's counts, sweeps/README.md "The CPU plan"): train rows,
# rows held out for selection, padded tokens per example in batches of 32 grouped by length at length 128 (MiniLM's
# WordPiece; RoBERTa's BPE gives about as many), tokens of the dev + selection rows evaluated after each epoch.
GLUE_TASKS = {  # the order in which the plan adds tasks: first those every method clears its trivial baseline on in
    "stsb": (5749, 500, 33.5, 61_536),  # the CPU set (sweeps/cpu_glue.yaml), cheapest first; then RTE and CoLA,
    "mrpc": (3668, 400, 56.9, 43_111),  # where the CPU runs stayed at their baselines (results/glue_cpu_2026-12-03/)
    "sst2": (67349, 500, 18.2, 28_633),
    "rte": (2490, 250, 74.1, 34_201),
    "cola": (8551, 500, 12.2, 17_865),
}
GLUE_BATCH, GLUE_T = 32, 200                           # glue_gpu.yaml's batch; the GaLore family's default T
C4_BATCH, C4_SEQ, C4_BLOCKS = 64, 256, 2059            # c4_llama_60m_gpu.yaml; the local shard's 256-token blocks
C4_EVAL_TOKENS = 2 * 131_072                           # reported + selection slices
C4_STEPS = (32, 24, 16, 12, 8)                         # at most one pass over the shard: 32 x 64 = 2048 blocks;
# nine methods x 6 runs at 4 s of start-up each leave 8 steps beside one GLUE task (6 methods: 32 steps)
GLUE_EPOCHS = (3, 2, 1)


@dataclass(frozen=True)
class Workload:
    """One run's work: what the estimate is linear in (so twice the workload costs twice the seconds)."""
    model: str
    method: str
    steps: int
    train_tokens: float
    eval_tokens: float
    refreshes: int

    def scaled(self, k: int) -> "Workload":
        return replace(self, steps=self.steps * k, train_tokens=self.train_tokens * k,
                       eval_tokens=self.eval_tokens * k, refreshes=self.refreshes * k)


def run_seconds(w: Workload) -> float:
    """Seconds of one run's training and evaluation on the GPU (start-up excluded: START_S)."""
    tp = THROUGHPUT[w.model]
    return (w.train_tokens / tp.train_tokens_per_s + w.steps * tp.step_s[w.method]
            + w.refreshes * tp.refresh_s + w.eval_tokens / tp.eval_tokens_per_s)


def glue_workload(model: str, task: str, method: str, epochs: int) -> Workload:
    rows, held_out, padded, eval_tokens = GLUE_TASKS[task]
    trained = rows - held_out
    steps = epochs * math.ceil(trained / GLUE_BATCH)
    refreshes = math.ceil(steps / GLUE_T) if method in PROJECTED else 0
    return Workload(model, method, steps, epochs * trained * padded, epochs * eval_tokens, refreshes)


def c4_workload(method: str, steps: int) -> Workload:
    refreshes = 4 if method in PROJECTED else 0        # T = steps / 4 (c4_overrides)
    return Workload("llama_60m", method, steps, steps * C4_BATCH * C4_SEQ, C4_EVAL_TOKENS, refreshes)


@dataclass
class Part:
    lane: str                     # "glue" or "c4": the parts of a lane run one after another
    name: str                     # "glue grid", "glue seeds", "c4 grid", "c4 seeds"
    sweep: str
    overrides: list
    runs: list                    # (label, seconds including START_S)

    @property
    def seconds(self) -> float:
        return PROCESS_S + sum(s for _, s in self.runs)


@dataclass
class Plan:
    model: str = "minilm"
    glue_tasks: tuple = ("rte",)
    epochs: int = 2
    c4_steps: int = 32
    c4_methods: tuple = C4_METHODS
    grid: tuple = GRID
    seeds: tuple = REPORTED_SEEDS
    budget_s: float = BUDGET_S
    parts: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        self.parts = self._parts()

    def _parts(self) -> list[Part]:
        grid_ov = [f"train.lr_factor={','.join(self.grid)}", f"seed={SELECTION_SEED}"]
        seed_ov = [f"seed={','.join(map(str, self.seeds))}", "train.lr_factor=1", "train.lr_choice=selection"]
        parts = []
        if self.glue_tasks:
            common = [f"task={','.join('glue/' + t for t in self.glue_tasks)}", f"method={','.join(GLUE_METHODS)}",
                      f"model={self.model}", f"train.epochs={self.epochs}"]
            for name, ov, n in (("glue grid", grid_ov, len(self.grid)), ("glue seeds", seed_ov, len(self.seeds))):
                runs = [(f"{t} {m}", START_S + run_seconds(glue_workload(self.model, t, m, self.epochs)))
                        for t in self.glue_tasks for m in GLUE_METHODS for _ in range(n)]
                parts.append(Part("glue", name, "gpu_glue", common + ov, runs))
        common = [f"method={','.join(self.c4_methods)}", *c4_overrides(self.c4_steps)]
        for name, ov, n in (("c4 grid", grid_ov, len(self.grid)), ("c4 seeds", seed_ov, len(self.seeds))):
            runs = [(f"llama_60m {m}", START_S + run_seconds(c4_workload(m, self.c4_steps)))
                    for m in self.c4_methods for _ in range(n)]
            parts.append(Part("c4", name, "gpu_c4", common + ov, runs))
        return parts

    def lanes(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.parts:
            out[p.lane] = out.get(p.lane, 0.0) + p.seconds
        return out

    @property
    def total_s(self) -> float:
        lanes = self.lanes()
        return (CONTENTION if len(lanes) > 1 else 1.0) * max(lanes.values()) + TABLES_S

    def describe(self) -> str:
        glue = (f"GLUE {', '.join(self.glue_tasks)} (full train sets, {self.model}, {self.epochs} epochs) x "
                f"{', '.join(GLUE_METHODS)}" if self.glue_tasks else "GLUE: none")
        lines = [f"plan: {glue}; C4 LLaMA-60M {self.c4_steps} steps x {C4_BATCH} x {C4_SEQ} tokens x "
                 f"{', '.join(self.c4_methods)}; lr grid x {', '.join(self.grid)} on seed {SELECTION_SEED}, "
                 f"then seeds {', '.join(map(str, self.seeds))} at the chosen rate"]
        for p in self.parts:
            lines.append(f"  estimate {p.name:<10} {len(p.runs):>3} runs  {p.seconds:6.0f} s")
        lanes = self.lanes()
        lines.append("  lanes side by side: " + ", ".join(f"{k} {v:.0f} s" for k, v in lanes.items())
                     + (f", x {CONTENTION} for sharing the GPU" if len(lanes) > 1 else "")
                     + f", + {TABLES_S:.0f} s tables")
        lines.append(f"estimate: total {self.total_s:.0f} s of a {self.budget_s:.0f} s budget")
        return "\n".join(lines)


def c4_overrides(steps: int) -> list[str]:
    """The plan's C4 steps, with GaLore's T and ReLoRA's K at a quarter of them (4 subspaces / cycles)."""
    quarter = max(1, steps // 4)
    return [f"train.max_steps={steps}", f"train.eval_every={steps}", f"per_task.update_proj_gap={quarter}",
            f"per_task.relora_reset_every={quarter}", f"per_task.relora_restart_warmup={max(1, quarter // 4)}"]


def choose_plan(model: str = "minilm", budget_s: float = BUDGET_S) -> Plan:
    """The largest plan that fits: as many GLUE tasks as possible (in GLUE_TASKS' order), then the most epochs, then the
    most C4 steps; the grid and the seeds are fixed by the protocol. None fits: the smallest, which run() refuses."""
    tasks = list(GLUE_TASKS)
    for n in range(len(tasks), -1, -1):
        for epochs in GLUE_EPOCHS:
            for steps in C4_STEPS:
                plan = Plan(model, tuple(tasks[:n]), epochs, steps, budget_s=budget_s)
                if plan.total_s <= budget_s:
                    return plan
    return Plan(model, (), GLUE_EPOCHS[-1], C4_STEPS[-1], budget_s=budget_s)


# ------------------------------------------------------------------------------------------------------- the runs
DRY_GLUE = ["model=bert_tiny", "task.max_train_samples=64", "task.selection_samples=48", "task.max_eval_samples=32",
            "train.batch_size=16", "train.epochs=1"]
DRY_C4 = ["model=llama_tiny", "model.tokenizer=mistral-sp", "rank=8", "task.seq_len=64", "train.batch_size=8",
          "task.eval_tokens=512", "task.selection_tokens=512", *c4_overrides(2)]
DRY_COMMON = ["precision=fp32", "device=cpu", "train.num_threads=1"]


def commands(plan: Plan, out: Path, dry: bool) -> list[tuple[Part, list[str]]]:
    """Each part's command line: `run.py -m -cd sweeps -cn <sweep>` with the plan's overrides (shrunk when dry)."""
    cmds = []
    for p in plan.parts:
        ov = list(p.overrides)
        if dry:
            ov = [o for o in ov if not o.startswith(("model=", "train.epochs=", "train.max_steps=", "train.eval_every=",
                                                     "per_task."))]
            if p.lane == "glue":
                ov = [f"task=glue/{plan.glue_tasks[0]}" if o.startswith("task=") else o for o in ov]
            ov += (DRY_GLUE if p.lane == "glue" else DRY_C4) + DRY_COMMON
        ov += [f"results_dir={out}", f"checkpoint_dir={out / 'checkpoints'}", f"task.cache_dir={out / 'cache'}"
               if p.lane == "c4" and dry else None, "logger.mode=disabled",
               f"hydra.sweep.dir={out / 'multirun' / p.name.replace(' ', '_')}"]
        cmds.append((p, [sys.executable, str(ROOT / "run.py"), "-m", "-cd", str(ROOT / "sweeps"), "-cn", p.sweep,
                         *[o for o in ov if o]]))
    return cmds


def _run_part(part: Part, cmd: list[str], log: Path, deadline: float) -> dict:
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            stopped = False
        except subprocess.TimeoutExpired:  # the budget is spent: SIGTERM writes an incomplete result, then stop
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            stopped = True
    return {"part": part.name, "rc": rc, "stopped_at_budget": stopped, "seconds": time.monotonic() - t0,
            "estimate_s": part.seconds, "log": str(log)}


def _lane(parts: list, out: Path, deadline: float, done: list) -> None:
    for i, (part, cmd) in enumerate(parts):
        print(f"start {part.name} ({len(part.runs)} runs): {' '.join(cmd[2:])}", flush=True)
        row = _run_part(part, cmd, out / "logs" / f"{part.name.replace(' ', '_')}.log", deadline)
        done.append(row)
        print(f"done {part.name}: exit {row['rc']} in {row['seconds']:.0f} s (estimate {row['estimate_s']:.0f} s)"
              + (" -- stopped: the budget is spent" if row["stopped_at_budget"] else ""), flush=True)
        if row["stopped_at_budget"]:
            return


def device_slug() -> str:
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-") or "cuda"


def execute(plan: Plan, out: Path, dry: bool) -> int:
    """Run the plan's lanes side by side, then build the tables; 0 when every reported seed run completed."""
    from .tables import build_tables

    (out / "logs").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + plan.budget_s - TABLES_S
    by_lane: dict[str, list] = {}
    for part, cmd in commands(plan, out, dry):
        by_lane.setdefault(part.lane, []).append((part, cmd))
    done: list[dict] = []
    threads = [threading.Thread(target=_lane, args=(parts, out, deadline, done)) for parts in by_lane.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = build_tables(out, out / "tables", allow_dirty=True, memory=False)
    wall = time.monotonic() - start
    summary = {"plan": {"model": plan.model, "glue_tasks": list(plan.glue_tasks), "epochs": plan.epochs,
                        "c4_steps": plan.c4_steps, "grid": list(plan.grid), "seeds": list(plan.seeds),
                        "estimate_s": plan.total_s, "budget_s": plan.budget_s},
               "dry_run": dry, "parts": sorted(done, key=lambda r: r["part"]), "wall_s": wall}
    (out / "gpu_table.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"tables: {len(paths)} files in {out / 'tables'}")
    print(f"{'dry run (CPU)' if dry else 'GPU table'}: {wall:.0f} s wall (the GPU plan's estimate {plan.total_s:.0f} s)"
          f" -> {out}")
    seeds_failed = [r["part"] for r in done if r["part"].endswith("seeds") and r["rc"] != 0]
    stopped = [r["part"] for r in done if r["stopped_at_budget"]]
    if stopped or seeds_failed or len(done) < len(plan.parts):
        print(f"error: not every part completed (stopped at the budget: {stopped or 'none'}; failed seed parts: "
              f"{seeds_failed or 'none'}); rerun the same command: complete runs are skipped", file=sys.stderr)
        return 1
    return 0


HUB_IDS = {"roberta-base": "FacebookAI/roberta-base"}   # gnlorp/conf/model/roberta-base.yaml's path


def _check_model_reachable(model: str) -> None:
    """A hub model offline (HF_HUB_OFFLINE=1, which make sets) without a local copy would fail every GLUE run of
    the plan one after another: refuse before anything starts."""
    from .errors import UserError

    if model not in HUB_IDS or os.environ.get("HF_HUB_OFFLINE") != "1":
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(HUB_IDS[model], "config.json"), str):
        raise UserError(f"--model {model} needs {HUB_IDS[model]} from the Hugging Face hub, but HF_HUB_OFFLINE=1 and "
                        f"there is no local copy; run `python -m gnlorp.gpu_table --model {model}` where the hub is "
                        f"reachable (without HF_HUB_OFFLINE), or use --model minilm")


def _main(argv) -> None:
    from .errors import UserError, one_line_argument_parser

    ap = one_line_argument_parser(prog="python -m gnlorp.gpu_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm", choices=[m for m in THROUGHPUT if m != "llama_60m"],
                    help="the GLUE encoder (default minilm: offline; roberta-base needs the hub)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"wall-time budget (default {BUDGET_S})")
    ap.add_argument("--tasks", default=None, help="GLUE tasks, comma-separated (default: the plan's); 'none' for C4 only")
    ap.add_argument("--epochs", type=int, default=None, help="GLUE epochs (default: the plan's)")
    ap.add_argument("--c4-steps", type=int, default=None, help="C4 steps (default: the plan's)")
    ap.add_argument("--c4-methods", default=None,
                    help=f"C4 methods, comma-separated (default: all of {', '.join(C4_METHODS)})")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default: results/gpu_table/<device> on a GPU, a temporary folder dry)")
    ap.add_argument("--dry", action="store_true", help="the tiny CPU version even where a GPU is present")
    ap.add_argument("--plan-only", action="store_true", help="print the plan and its estimate, run nothing")
    a = ap.parse_args(argv)
    if a.budget_s <= 0:
        raise UserError(f"--budget-s {a.budget_s:g}: give a positive number of seconds")
    plan = choose_plan(a.model, a.budget_s)
    if a.tasks is not None:
        tasks = () if a.tasks == "none" else tuple(t.strip() for t in a.tasks.split(","))
        unknown = [t for t in tasks if t not in GLUE_TASKS]
        if unknown or len(set(tasks)) != len(tasks):
            raise UserError(f"--tasks {a.tasks!r}: give distinct tasks of {', '.join(GLUE_TASKS)} (or none)")
        plan = replace(plan, glue_tasks=tasks)
    if a.epochs is not None:
        if a.epochs < 1:
            raise UserError(f"--epochs {a.epochs}: give at least 1")
        plan = replace(plan, epochs=a.epochs)
    if a.c4_steps is not None:
        if not 1 <= a.c4_steps <= C4_BLOCKS // C4_BATCH:
            raise UserError(f"--c4-steps {a.c4_steps}: give 1 to {C4_BLOCKS // C4_BATCH} (one pass over the local "
                            f"C4 shard's {C4_BLOCKS} blocks in batches of {C4_BATCH})")
        plan = replace(plan, c4_steps=a.c4_steps)
    if a.c4_methods is not None:
        methods = tuple(m.strip() for m in a.c4_methods.split(","))
        if not methods or any(m not in C4_METHODS for m in methods) or len(set(methods)) != len(methods):
            raise UserError(f"--c4-methods {a.c4_methods!r}: give distinct methods of {', '.join(C4_METHODS)}")
        plan = replace(plan, c4_methods=methods)
    print(plan.describe(), flush=True)
    if plan.total_s > plan.budget_s:
        raise UserError(f"the plan's estimate, {plan.total_s:.0f} s, exceeds the budget of {plan.budget_s:.0f} s; "
                        f"ask for less (--tasks, --epochs, --c4-steps) or a larger --budget-s")
    if a.plan_only:
        return
    import torch

    dry = a.dry or not torch.cuda.is_available()
    if not dry:  # the dry run trains BERT-tiny whatever --model says
        _check_model_reachable(a.model)
    out = a.out or (Path(tempfile.mkdtemp(prefix="gpu_table_dry_")) if dry
                    else ROOT / "results" / "gpu_table" / device_slug())
    if dry:
        print("no CUDA (or --dry): a dry run of the same plan at tiny sizes on the CPU", flush=True)
    sys.exit(execute(plan, out.resolve(), dry))


def main(argv=None) -> None:
    from .errors import run_command

    run_command(_main, argv, what="--out")


if __name__ == "__main__":
    main()
