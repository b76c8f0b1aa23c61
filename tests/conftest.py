"""Shared test setup: never touch the network, and compose the real Hydra configs for end-to-end runs."""

import functools
import os
from pathlib import Path

import pytest

# A missing local file must fail fast instead of waiting on the unreachable hub. One torch thread per test process
# (and the runs it starts): `make test`'s two workers on two cores, each with torch's default of a thread per core,
# oversubscribe the cores and wait on each other's threads: a tiny C4 run took 3x as long (issue 29, item 6).
for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "gnlorp" / "conf"
SHARED = ROOT.parent / "shared" / "data"
GLUE_DIR = SHARED / "glue_data"
C4_DIR = SHARED / "c4" / "en"
SHARED_PRESENT = GLUE_DIR.is_dir() and C4_DIR.is_dir()
needs_shared = pytest.mark.shared_data  # explicit; tests that reach the shared paths are found without it (below)


# ------------------------------------------------------------------ the shared data, handled in this one place
def _reaches_shared(obj, module_globals: dict, seen: set) -> bool:
    """Whether a test function (or a helper or fixture it calls, or a module constant it reads) reaches the
    shared data: the names its code reads, followed through the module's functions and path constants."""
    code = getattr(obj, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    codes = [code]
    while codes:
        c = codes.pop()
        codes += [k for k in c.co_consts if hasattr(k, "co_names")]
        for name in c.co_names:
            value = module_globals.get(name)
            if isinstance(value, (str, Path)) and str(value).startswith(str(SHARED.parent)):
                return True
            if callable(value) and getattr(value, "__module__", None) in (module_globals.get("__name__"), __name__):
                target = getattr(value, "__wrapped__", value)
                if _reaches_shared(target, getattr(target, "__globals__", module_globals), seen):
                    return True
    return False


def _needs_shared(item) -> bool:
    if item.get_closest_marker("shared_data"):
        return True
    fn = getattr(item, "function", None)
    if fn is None:
        return False
    if _reaches_shared(fn, fn.__globals__, set()):
        return True
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(_reaches_shared(d.func, d.func.__globals__, set()) for ds in defs.values() for d in ds)


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data: reads ../shared/data (skipped where it is absent)")
    if not SHARED_PRESENT and os.environ.get("CI") == "true":
        pytest.exit(f"the shared data is missing: expected {GLUE_DIR} and {C4_DIR} beside the checkout "
                    f"(CI lays shared/ there); nothing was tested.", returncode=4)


def pytest_collection_modifyitems(config, items):
    if SHARED_PRESENT:
        return
    skip = pytest.mark.skip(reason=f"shared data not found at {SHARED}")
    for item in items:
        if _needs_shared(item):
            item.add_marker(skip)


@functools.cache
def register_schemas() -> None:
    """Hydra's ConfigStore is process-wide: the schemas are stored once (each store converts them anew)."""
    from gnlorp.schema import register

    register()


def compose(overrides: list[str]):
    """The config run.py would see for these command-line overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def tiny_glue(tmp_path, *extra: str) -> list[str]:
    """A GLUE run that takes seconds: random tiny BERT, 64 RTE examples."""
    return [
        "task=glue/rte", "model=bert_tiny", f"task.data_dir={GLUE_DIR}", "task.max_train_samples=64",
        "task.max_eval_samples=32", "train.batch_size=16", "train.epochs=2", f"results_dir={tmp_path}/results",
        f"checkpoint_dir={tmp_path}/checkpoints", "keep_checkpoint=true", "train.progress=false", "logger.mode=disabled",
        *extra,
    ]


def tiny_c4(tmp_path, *extra: str) -> list[str]:
    """A C4 run that takes seconds: LLaMA-tiny, blocks of 64 tokens streamed from the shared shard by 4 streams."""
    return [
        "task=c4", "model=llama_tiny", "model.tokenizer=mistral-sp", f"task.data_dir={C4_DIR}", "task.seq_len=64",
        "task.streams=4", "task.shuffle_blocks=8", f"task.cache_dir={tmp_path}/cache", "task.eval_tokens=1024", "train.batch_size=4", "train.max_steps=12",
        "train.eval_every=6", "rank=8", f"results_dir={tmp_path}/results", f"checkpoint_dir={tmp_path}/checkpoints",
        "keep_checkpoint=true", "train.progress=false", "logger.mode=disabled", *extra,
    ]


def cli_env(extra: dict | None = None) -> dict:
    """This environment, unbuffered, with `extra` set (a None value removes the variable)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(args: list[str], cwd, env_extra: dict | None = None, timeout: float = 240):
    """`python run.py <args>` as a user runs it, in `cwd`; the CompletedProcess gets `.seconds`."""
    import subprocess
    import sys
    import time

    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=cli_env(env_extra),
                       capture_output=True, text=True, timeout=timeout)
    p.seconds = time.monotonic() - t0
    return p


def with_overrides(args: list[str], *overrides: str) -> list[str]:
    """`args` with each `key=value` of `overrides` replacing the entry for that key (one entry per key)."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [a for a in args if a.split("=", 1)[0] not in keys] + list(overrides)


def c4_corpus(root: Path, shards: int = 4) -> Path:
    """The shared train shard's documents split over `shards` files, with the shared validation file."""
    import gzip
    import shutil

    root.mkdir(parents=True)
    with gzip.open(C4_DIR / "c4-train.00000-of-01024.first1000.json.gz", "rt") as f:
        docs = f.readlines()
    for k in range(shards):
        with gzip.open(root / f"c4-train.{k:05d}-of-{shards:05d}.json.gz", "wt") as f:
            f.writelines(docs[k::shards])
    shutil.copy(C4_DIR / "c4-validation.sample2000.json.gz", root)
    return root
