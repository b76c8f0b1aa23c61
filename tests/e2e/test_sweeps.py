"""sweeps/*.yaml: every sweep is a Hydra multirun whose grid points compose to the paper's settings, run as
`python run.py -m -cd sweeps -cn <sweep>`, resumable (skip_complete, resume), and the CPU set fits its time budget."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from conftest import C4_DIR, CONF, ROOT, needs_shared, register_schemas
from gnlorp.checks import galore_scale
from gnlorp.methods import LOW_RANK, PROJECTED
from gnlorp.runner import check_config, run_identity

SWEEPS = ROOT / "sweeps"
C4_METHODS = ("full", "lora", "galore", "gradnormlorp", "relora", "switchlora")
CPU_C4_METHODS = (*C4_METHODS, "apollo", "apollo_mini", "fira")  # the CPU protocol covers APOLLO(-Mini) and Fira too
GRID_SIZE = {"paper_glue": 9 * 2 * 5, "paper_c4": 4 * len(C4_METHODS), "paper_llama7b": 3, "cpu_glue": 2 * 4 * 4,
             "cpu_c4": len(CPU_C4_METHODS) * 4, "gpu_glue": 5 * 4 * 3, "gpu_c4": len(C4_METHODS) * 3}
LR_FACTORS = {"cpu_c4": ("0.1", "0.3", "1", "3"), "cpu_glue": ("0.3", "1", "3", "10"),  # grids around each recipe's rate
              "gpu_c4": ("0.3", "1", "3"), "gpu_glue": ("0.3", "1", "3")}
GLUE9 = ["cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp", "wnli"]
C4_PAPER = {  # GaLore Table 2 / PAPER_NUMBERS.md: size -> (rank, steps)
    "llama_60m": (128, 10_000), "llama_130m": (256, 20_000), "llama_350m": (256, 60_000), "llama_1b": (512, 100_000)}
# paper_c4 and gpu_c4 also run APOLLO, APOLLO-Mini and Fira; at paper sizes with their own scripts' settings where
# these differ from GaLore's (zhuhanqing/APOLLO scripts/pretrain_c4/, xichen-fy/Fira pre_training_c4/scripts/):
GPU_C4_METHODS = C4_METHODS + ("apollo", "apollo_mini", "fira")
GRID_SIZE.update(paper_c4=4 * len(GPU_C4_METHODS), gpu_c4=len(GPU_C4_METHODS) * 3)
OWN_PAPER = {("llama_130m", "apollo"): {"rank": 192}, ("llama_1b", "apollo"): {"rank": 256},
             ("llama_130m", "apollo_mini"): {"apollo_scale": 192.0}, ("llama_1b", "fira"): {"scale": 0.0625}}


def compose_sweep(sweep: str, point: list[str]):
    """The config one job of `run.py -m -cd sweeps -cn <sweep>` sees: the sweep file as the primary config
    (with conf/ on the search path, as run.py has it) plus the grid point's overrides."""
    from hydra import compose, initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        return compose(config_name=sweep, overrides=[f"hydra.searchpath=[file://{CONF}]", *point])


def grid(sweep: str, extra: list[str] = ()) -> list[list[str]]:
    """The grid points, expanded by Hydra's own BasicSweeper from the file's hydra.sweeper.params (command-line
    `extra` replace a key's list, as on the command line)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = yaml.safe_load((SWEEPS / f"{sweep}.yaml").read_text())["hydra"]["sweeper"]["params"]
    args = [f"{k}={v}" for k, v in params.items()] + list(extra)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return [list(p) for b in batches for p in b]


def _point(p: list[str]) -> dict:
    return dict(a.split("=", 1) for a in p)


def _sample(points: list, k: int = 6) -> list:
    """The first three points and an even spread of the rest (all when few)."""
    if len(points) <= k:
        return points
    step = math.ceil((len(points) - 3) / (k - 3))
    return points[:3] + points[3::step]


def test_every_sweep_file_is_a_resumable_multirun_over_an_experiment():
    files = sorted(p.stem for p in SWEEPS.glob("*.yaml"))
    assert files == sorted(GRID_SIZE)
    for name in files:
        doc = yaml.safe_load((SWEEPS / f"{name}.yaml").read_text())
        # the experiment sits in the defaults list, so the sweep-level config (which command-line keys such as
        # task.eval_tokens=... are checked against) is already the experiment's
        first = doc["defaults"][1]["override experiment"]
        assert doc["defaults"] == ["config", {"override experiment": first}, "_self_"], name
        assert doc["skip_complete"] is True and doc["resume"] is True, name
        assert doc["hydra"]["sweep"]["dir"].startswith(f"multirun/{name}/"), name
        experiments = doc["hydra"]["sweeper"]["params"].get("experiment", first).split(",")
        assert experiments[0] == first, name
        assert all((CONF / "experiment" / f"{e}.yaml").is_file() for e in experiments), name
        assert f"python run.py -m -cd sweeps -cn {name}" in (SWEEPS / f"{name}.yaml").read_text()
        assert len(grid(name)) == GRID_SIZE[name], name


def _check_paper_glue(cfg, p):
    task = p["task"].split("/")[1]
    assert (cfg.model.name, cfg.precision.name, cfg.task.name) == ("roberta-base", "bf16", task)
    assert cfg.method.name == p["method"] and cfg.rank == int(p["rank"].strip("'"))
    assert galore_scale(cfg) == {4: 4.0, 8: 2.0}[cfg.rank]       # GaLore Table 7: alpha 4 at rank 4, 2 at rank 8
    assert (cfg.train.epochs, cfg.task.max_length) == (30, 512)
    assert cfg.train.batch_size == (32 if task == "cola" else 16)
    assert cfg.task.data_dir is None
    if cfg.method.name in PROJECTED:  # T is a GaLore-family key: the other methods do not have it
        assert cfg.method.update_proj_gap == 500
    assert cfg.train.eval_every is None


def _check_paper_c4(cfg, p):
    model = cfg.model.name
    rank, steps = C4_PAPER[model]
    own = OWN_PAPER.get((model, cfg.method.name), {})
    assert p["experiment"] == f"c4_{model}" and cfg.method.name == p["method"]
    assert (cfg.task.family, cfg.precision.name, cfg.rank, galore_scale(cfg)) == \
        ("c4", "bf16", own.get("rank", rank), own.get("scale", 0.25))
    if cfg.method.name.startswith("apollo"):  # the scripts' --apollo_scale: 1 (APOLLO), 128 (Mini; 192 at 130M)
        assert cfg.method.apollo_scale == own.get("apollo_scale", 128.0 if cfg.method.name == "apollo_mini" else 1.0)
    if cfg.method.name in GPU_C4_METHODS[len(C4_METHODS):]:  # the scripts' lr, T and weight decay
        assert (check_config(cfg)["lr"], cfg.method.update_proj_gap, cfg.train.weight_decay) == (0.01, 200, 0.0)
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.task.seq_len) == (steps, 512, 256)
    assert (cfg.train.warmup_ratio, cfg.train.min_lr_ratio, cfg.model.tokenizer) == (0.1, 0.1, "t5-base")
    assert cfg.train.max_steps % cfg.train.eval_every == 0


def _check_paper_llama7b(cfg, p):
    assert (cfg.model.name, cfg.precision.name, cfg.precision.optim_bits, cfg.rank) == ("llama_7b", "8bit", 8, 1024)
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.task.seq_len) == (80_000, 512, 256)
    assert cfg.train.max_steps * cfg.train.batch_size * cfg.task.seq_len == 10_485_760_000  # the paper's 10.5B tokens
    assert 40_000 % cfg.train.eval_every == 0 and cfg.method.name == p["method"]


def _check_cpu_glue(cfg, p):
    task = p["task"].split("/")[1]
    assert (cfg.model.name, cfg.rank, cfg.precision.name, cfg.task.name) == ("minilm", 8, "fp32", task)
    assert cfg.seed == int(p["seed"]) == 0 and cfg.method.name == p["method"]
    assert cfg.task.max_train_samples == {"stsb": 1200, "sst2": 1000}[task]
    assert cfg.task.selection_samples == {"stsb": 500, "sst2": 500}[task]
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.task.max_length, cfg.train.group_by_length) == (2, 32, 128, True)
    assert cfg.task.data_dir == "../shared/data/glue_data" and cfg.keep_going is True
    assert str(p["train.lr_factor"]) in LR_FACTORS["cpu_glue"]
    assert check_config(cfg)["lr"] == pytest.approx(cfg.task.lr[cfg.method.name] * float(p["train.lr_factor"]))


def _check_cpu_c4(cfg, p):
    assert (cfg.model.name, cfg.model.tokenizer, cfg.rank, cfg.precision.name) == ("llama_20m", "mistral-sp", 64, "fp32")
    assert cfg.train.max_steps * cfg.train.batch_size * cfg.task.seq_len == 409_600  # the fixed token budget
    assert cfg.task.data_dir == "../shared/data/c4/en" and cfg.method.name == p["method"]
    assert (cfg.task.eval_tokens, cfg.task.selection_tokens) == (131_072, 131_072)  # reported, then selection
    assert str(p["train.lr_factor"]) in LR_FACTORS["cpu_c4"] and cfg.keep_going is True
    assert check_config(cfg)["lr"] == pytest.approx(cfg.task.lr[cfg.method.name] * float(p["train.lr_factor"]))


def _check_gpu_glue(cfg, p):
    """make gpu-table's GLUE part: the CPU recipe on the full train sets (selection rows still held out), bf16."""
    task = p["task"].split("/")[1]
    assert (cfg.model.name, cfg.rank, cfg.precision.name, cfg.task.name) == ("minilm", 8, "bf16", task)
    assert cfg.precision.cuda_param_dtype == "float32"   # bf16 autocast over float32 weights, as glue_roberta
    assert cfg.task.max_train_samples is None           # the full train set
    assert cfg.task.selection_samples == {"cola": 500, "stsb": 500, "mrpc": 400, "rte": 250, "sst2": 500}[task]
    assert (cfg.train.batch_size, cfg.task.max_length, cfg.train.group_by_length) == (32, 128, True)
    assert cfg.seed == int(p["seed"]) == 0 and cfg.results_dir.startswith("results/gpu_table")
    assert str(p["train.lr_factor"]) in LR_FACTORS["gpu_glue"] and cfg.keep_going is True


def _check_gpu_c4(cfg, p):
    """make gpu-table's C4 part: LLaMA-60M at the paper's rank, one pass at most over the local shard's blocks."""
    assert (cfg.model.name, cfg.model.tokenizer, cfg.rank, cfg.precision.name) == ("llama_60m", "mistral-sp", 128, "bf16")
    assert cfg.train.max_steps * cfg.train.batch_size <= 2059 and cfg.task.seq_len == 256  # no block twice
    assert cfg.train.max_steps == cfg.train.eval_every and cfg.task.selection_tokens == cfg.task.eval_tokens
    assert cfg.task.data_dir == "../shared/data/c4/en" and cfg.results_dir.startswith("results/gpu_table")
    if cfg.method.name in PROJECTED or cfg.method.name.startswith("apollo"):
        assert cfg.method.update_proj_gap * 4 == cfg.train.max_steps  # 4 subspaces (projector draws), as cpu_c4
    assert str(p["train.lr_factor"]) in LR_FACTORS["gpu_c4"] and cfg.keep_going is True


CHECKS = {"paper_glue": _check_paper_glue, "paper_c4": _check_paper_c4, "paper_llama7b": _check_paper_llama7b,
          "cpu_glue": _check_cpu_glue, "cpu_c4": _check_cpu_c4, "gpu_glue": _check_gpu_glue, "gpu_c4": _check_gpu_c4}


def _check_point(sweep, point):
    cfg = compose_sweep(sweep, point)
    assert cfg.skip_complete is True and cfg.resume is True
    CHECKS[sweep](cfg, _point(point))
    check_config(cfg)  # everything the runner checks before it loads anything (8-bit: bitsandbytes imports)
    return cfg


@pytest.mark.parametrize("sweep", sorted(GRID_SIZE))
def test_grid_points_compose_to_the_intended_settings(sweep):
    cfgs = [_check_point(sweep, p) for p in _sample(grid(sweep))]
    ids = [run_identity(cfg, check_config(cfg)).run_id for cfg in cfgs]
    assert len(set(ids)) == len(ids) or sweep == "paper_glue"  # paper_glue: full is rank-free (see below)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", sorted(GRID_SIZE))
def test_every_grid_point_composes(sweep):
    ids = [run_identity(cfg, check_config(cfg)).run_id for cfg in (_check_point(sweep, p) for p in grid(sweep))]
    distinct = {"paper_glue": 9 * (1 + 4 * 2)}.get(sweep, GRID_SIZE[sweep])  # full runs once per task, not per rank
    assert len(set(ids)) == distinct


def test_the_grid_sweeps_are_those_lr_selection_never_reports_on_the_selection_seed():
    """lr_selection.GRID_SWEEPS names exactly the sweep files that run a learning-rate grid on its SELECTION_SEED."""
    from gnlorp.lr_selection import GRID_SWEEPS, SELECTION_SEED

    grids = set()
    for path in SWEEPS.glob("*.yaml"):
        params = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
        if len(str(params.get("train.lr_factor", "")).split(",")) > 1:
            assert str(params["seed"]) == str(SELECTION_SEED), path.name
            grids.add(path.stem)
    assert grids == set(GRID_SWEEPS)


def test_command_line_keys_replace_the_grid_lists():
    """The README's parts: `task=glue/stsb` runs one task of cpu_glue; `rank=8` halves paper_glue."""
    part = grid("cpu_glue", ["task=glue/stsb"])
    assert len(part) == 16 and {_point(p)["task"] for p in part} == {"glue/stsb"}
    seeds = grid("cpu_glue", ["task=glue/stsb", "seed=1,2,3", "train.lr_factor=1", "train.lr_choice=selection"])
    assert len(seeds) == 12 and {_point(p)["train.lr_choice"] for p in seeds} == {"selection"}
    assert {_point(p)["rank"] for p in grid("paper_glue", ["rank=8"])} == {"8"}
    assert {_point(p)["seed"] for p in grid("paper_glue", ["seed=0,1,2"])} == {"0", "1", "2"}


def _cli(args, cwd, timeout=240, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("sweep", ["paper_glue", "paper_c4", "paper_llama7b"])
def test_run_py_cfg_job_dry_run_of_the_gpu_sweeps(sweep):
    """`run.py --cfg job` with the sweep file and its first grid point: the real entry point composes it."""
    point = grid(sweep)[0]
    p = _cli([str(ROOT / "run.py"), "--cfg", "job", "--resolve", "-cd", "sweeps", "-cn", sweep, *point], ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = yaml.safe_load(p.stdout)
    from omegaconf import OmegaConf

    CHECKS[sweep](OmegaConf.create(cfg), _point(point))


NOOP_APP = '''
import json, sys
sys.path.insert(0, {root!r})
import hydra
from gnlorp.schema import register
register()

@hydra.main(version_base="1.3", config_path={conf!r}, config_name="config")
def main(cfg):
    from gnlorp.runner import run_name
    print("JOB " + json.dumps([run_name(cfg), cfg.skip_complete, cfg.resume]), flush=True)

main()
'''


def _dry_multirun(tmp_path, sweep, *extra):
    """`-m -cd sweeps -cn <sweep>` through Hydra's real sweeper and launcher, with run.py's config and a task that
    prints the job's run name instead of training."""
    app = tmp_path / "noop_app.py"
    app.write_text(NOOP_APP.format(root=str(ROOT), conf=str(CONF)))
    p = _cli([str(app), "-m", "-cd", str(SWEEPS), "-cn", sweep, f"hydra.sweep.dir={tmp_path}/multirun", *extra], ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("JOB ")]


def test_multirun_dry_run_cpu_c4(tmp_path):
    jobs = _dry_multirun(tmp_path, "cpu_c4")
    assert jobs == [[f"c4-llama_20m-{m}{'-r64' if m in LOW_RANK else ''}-fp32-s0", True, True]  # APOLLO-Mini: rank 1
                    for m in CPU_C4_METHODS for _ in LR_FACTORS["cpu_c4"]]


@pytest.mark.slow
def test_multirun_dry_run_paper_glue_one_task_part(tmp_path):
    jobs = _dry_multirun(tmp_path, "paper_glue", "task=glue/cola")
    names = [j[0] for j in jobs]
    assert len(names) == 10 and names[0] == "glue-cola-roberta-base-full-bf16-s0"
    assert names.count("glue-cola-roberta-base-full-bf16-s0") == 2  # the second one is skipped as complete
    assert "glue-cola-roberta-base-gradnormlorp-r4-bf16-s0" in names and "glue-cola-roberta-base-dora-r8-bf16-s0" in names


@pytest.mark.slow
def test_multirun_dry_run_paper_c4_and_7b(tmp_path):
    names = [j[0] for j in _dry_multirun(tmp_path, "paper_c4")]
    assert names[:4] == ["c4-llama_60m-full-bf16-s0", "c4-llama_60m-lora-r128-bf16-s0",
                         "c4-llama_60m-galore-r128-bf16-s0", "c4-llama_60m-gradnormlorp-r128-bf16-s0"]
    assert "c4-llama_1b-gradnormlorp-r512-bf16-s0" in names and len(names) == 4 * len(GPU_C4_METHODS)
    assert {"c4-llama_130m-apollo-r192-bf16-s0", "c4-llama_1b-apollo-r256-bf16-s0", "c4-llama_1b-fira-r512-bf16-s0",
            "c4-llama_130m-apollo_mini-bf16-s0"} <= set(names)
    names = [j[0] for j in _dry_multirun(tmp_path, "paper_llama7b")]
    assert names == ["c4-llama_7b-gradnormlorp-r1024-8bit-s0", "c4-llama_7b-galore-r1024-8bit-s0",
                     "c4-llama_7b-full-8bit-s0"]


# --------------------------------------------------------------------------- the CPU time budget (sweeps/README.md)
# A cost model fitted to runs on this 2-core machine's Intel Xeon (sweeps/README.md "The CPU plan"), which is how the
# 8-hour budget is defined; an AMD EPYC machine of the same size measured 2.7x slower. GLUE (MiniLM): least squares over
# the 60 runs of results/glue_cpu_subsets/ of seconds = steps x a per-method step cost + padded training tokens x a
# shared token cost; the step cost is dominated by the optimizer over the 22.7M weights, a quarter for LoRA. Padded
# tokens per example under group_by_length (the recipe's subsets, seed 0, both epochs) and the tokens of the dev and
# selection rows, counted with MiniLM's tokenizer from ../shared/data/glue_data:
GLUE_STEP_S = {"full": 0.533, "lora": 0.229, "galore": 0.611, "gradnormlorp": 0.578}
TOKEN_S = 0.42e-3                              # per padded training token
EVAL_TOKEN_S = TOKEN_S / 3                     # forward only, batches sorted by length (no padding to speak of)
GROUPED_PADDED = {"cola": 12.2, "stsb": 33.5, "mrpc": 56.9, "rte": 74.1, "sst2": 18.2}
EVAL_TOKENS = {"cola": 12_174 + 5_691, "stsb": 47_209 + 14_327, "mrpc": 21_723 + 21_388, "rte": 17_894 + 16_307,
               "sst2": 21_943 + 6_690}
START_S = 10                                   # per job of a multirun: model, data, tokenization
C4_STEP_S = 1.0                                # fp32, 8 x 256 tokens: the 18 cpu_c4 grid runs, ~2050 tokens/s
C4_EVAL_S_PER_TOKEN = C4_STEP_S / 2048 / 3     # forward only


def _glue_run_seconds(method: str, task: str, samples: int, epochs: int) -> float:
    train = epochs * (samples * GROUPED_PADDED[task] * TOKEN_S + math.ceil(samples / 32) * GLUE_STEP_S[method])
    return START_S + train + epochs * EVAL_TOKENS[task] * EVAL_TOKEN_S


TRAIN_ROWS = {"stsb": 5749, "sst2": 67349}  # ../shared/data/README.md; a null subset takes them all


def _glue_part_seconds(points: list[list[str]]) -> float:
    total = 0.0
    for p in points:
        cfg = compose_sweep("cpu_glue", p)
        assert cfg.train.group_by_length  # the token counts above assume it
        rows = cfg.task.max_train_samples or TRAIN_ROWS[cfg.task.name] - cfg.task.selection_samples
        total += _glue_run_seconds(cfg.method.name, cfg.task.name, rows, cfg.train.epochs)
    return total


def test_cpu_sweeps_fit_eight_hours_in_parts_under_an_hour():
    """sweeps/README.md's parts: per GLUE task the grid (16 runs) and the three reported seeds (12 runs, modelled at
    the recipe's rate: the chosen one costs the same); per C4 method pair the grid (8 runs; Fira's 4 alone), then one
    part per reported seed (9 runs); all in 8 hours."""
    seeds = ["seed=1,2,3", "train.lr_factor=1", "train.lr_choice=selection"]
    parts = {}
    for task in ("stsb", "sst2"):
        parts[f"{task} grid"] = _glue_part_seconds(grid("cpu_glue", [f"task=glue/{task}"]))
        parts[f"{task} seeds"] = _glue_part_seconds(grid("cpu_glue", [f"task=glue/{task}", *seeds]))
    c4 = compose_sweep("cpu_c4", grid("cpu_c4")[0])
    evals = c4.train.max_steps // c4.train.eval_every
    scored = c4.task.eval_tokens + c4.task.selection_tokens
    c4_run = START_S + c4.train.max_steps * C4_STEP_S + evals * scored * C4_EVAL_S_PER_TOKEN
    pairs = ("full,lora", "galore,gradnormlorp", "relora,switchlora", "apollo,apollo_mini", "fira")
    assert [m for p in pairs for m in p.split(",")] == list(CPU_C4_METHODS)  # the parts cover the grid's methods
    for pair in pairs:
        parts[f"c4 {pair}"] = len(grid("cpu_c4", [f"method={pair}"])) * c4_run
    for seed in range(1, 6):  # five reported seeds, one part each: the nine methods at their chosen rates
        parts[f"c4 seed {seed}"] = len(grid("cpu_c4", [f"seed={seed}", *seeds[1:]])) * c4_run
    minutes = {k: round(v / 60) for k, v in parts.items()}
    assert all(m <= 60 for m in minutes.values()), minutes
    assert sum(parts.values()) <= 8 * 3600, (round(sum(parts.values()) / 60), minutes)
    # the estimates sweeps/README.md gives
    assert minutes == {"stsb grid": 26, "stsb seeds": 20, "sst2 grid": 17, "sst2 seeds": 13,
                       "c4 full,lora": 34, "c4 galore,gradnormlorp": 34, "c4 relora,switchlora": 34,
                       "c4 apollo,apollo_mini": 34, "c4 fira": 17,
                       "c4 seed 1": 38, "c4 seed 2": 38, "c4 seed 3": 38, "c4 seed 4": 38, "c4 seed 5": 38}, minutes
    assert round(sum(parts.values()) / 60) == 417


@needs_shared
@pytest.mark.slow
def test_cpu_c4_sweep_runs_and_skips_complete_runs_on_a_rerun(tmp_path):
    """The real `python run.py -m -cd sweeps -cn cpu_c4`, shrunk to a tiny LLaMA, 2 steps and one method, twice."""
    args = [str(ROOT / "run.py"), "-m", "-cd", "sweeps", "-cn", "cpu_c4", "method=galore", "model=llama_tiny",
            "model.tokenizer=mistral-sp", "task.seq_len=64", "train.max_steps=2", "train.eval_every=null",
            "task.eval_tokens=512", "task.selection_tokens=512", "train.lr_factor=1", f"task.cache_dir={tmp_path}/cache",
            "train.num_threads=1", f"task.data_dir={C4_DIR}",
            f"results_dir={tmp_path}/results", f"checkpoint_dir={tmp_path}/ck", "logger.mode=disabled",
            f"hydra.sweep.dir={tmp_path}/multirun"]
    first = _cli(args, ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    (result,) = (tmp_path / "results").glob("c4-llama_tiny-galore-r64-fp32-s0-*.json")  # <name>-<hash>
    rec = json.loads(result.read_text())
    assert rec["status"] == "complete" and rec["config"]["rank"] == 64 and rec["train"]["steps"] == 2
    assert rec["origin"] == {"sweep": "cpu_c4", "experiment": "c4_llama_20m_cpu"}  # what tables can route by
    second = _cli(args, ROOT, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "skipped (skip_complete=true)" in second.stdout + second.stderr


@needs_shared
@pytest.mark.slow
def test_cpu_glue_grid_then_seeds_at_the_rate_the_held_out_rows_chose(tmp_path):
    """sweeps/README.md's two commands for one task, shrunk to a tiny BERT on 64 RTE rows: the grid (two rates, seed
    0) and then seed 1 with train.lr_choice=selection, which trains at the rate whose run scored best on the held-out
    rows at its best epoch (read back here from the grid's own files) and records how it was chosen."""
    common = [str(ROOT / "run.py"), "-m", "-cd", "sweeps", "-cn", "cpu_glue", "task=glue/rte", "method=lora",
              "model=bert_tiny", "task.max_train_samples=64", "task.selection_samples=48", "task.max_eval_samples=32",
              "train.batch_size=16", "train.num_threads=1", f"task.data_dir={ROOT.parent / 'shared/data/glue_data'}",
              f"results_dir={tmp_path}/results", f"checkpoint_dir={tmp_path}/ck", "logger.mode=disabled",
              f"hydra.sweep.dir={tmp_path}/multirun"]
    first = _cli([*common, "train.lr_factor=1,10"], ROOT, timeout=400)
    assert first.returncode == 0, first.stderr[-3000:]
    grid_runs = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("glue-rte-bert_tiny-lora-*-s0-*.json")]
    assert len(grid_runs) == 2 and {r["status"] for r in grid_runs} == {"complete"}
    assert all(r["config"]["train"]["group_by_length"] and len(r["eval_history"]) == 2 for r in grid_runs)
    best = {r["config"]["derived"]["lr"]: max(e["metrics"]["selection"]["accuracy"] for e in r["eval_history"])
            for r in grid_runs}
    second = _cli([*common, "seed=1", "train.lr_factor=1", "train.lr_choice=selection"], ROOT, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    (seed1,) = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("glue-rte-bert_tiny-lora-*-s1-*.json")]
    choice = seed1["config"]["derived"]["lr_choice"]
    assert choice["by"] == "selection" and sorted(choice["grid"]) == sorted(best) and choice["seeds"] == [0]
    assert best[seed1["config"]["derived"]["lr"]] == max(best.values())
    assert seed1["origin"] == {"sweep": "cpu_glue", "experiment": "glue_minilm_cpu"}
