"""The packaged configs compose from a fresh interpreter with Hydra's own API and nothing else (a notebook)."""

import json
import subprocess
import sys

from conftest import ROOT

NOTEBOOK = """
import json
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

with initialize_config_module("gnlorp.conf", version_base="1.3"):
    cfg = compose("config", overrides=["method=gradnormlorp", "task=glue/rte", "rank=4", "method.proj_type=full"])
print(json.dumps(OmegaConf.to_container(cfg.method, resolve=True) | {"rank": cfg.rank, "task": cfg.task.name}))
"""


def test_a_fresh_interpreter_composes_the_packaged_configs_with_overrides(tmp_path):
    p = subprocess.run([sys.executable, "-c", NOTEBOOK], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    # the method's schema took part: its own keys at their declared defaults beside the overridden ones
    assert (got["name"], got["proj_type"], got["rank"], got["task"]) == ("gradnormlorp", "full", 4, "rte")
    assert got["update_proj_gap"] == 200 and got["svd"] == "auto"
