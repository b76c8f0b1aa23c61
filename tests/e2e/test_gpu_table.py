"""make gpu-table's CPU dry run (gnlorp/gpu_table.py): the GPU plan shrunk to tiny sizes runs end to end as
`python -m gnlorp.gpu_table --dry --out DIR`: the plan's estimate first, then every part (GLUE and C4 grids on
selection seed 0, reported seeds at the rate the selection split chose), then the tables."""

import json
import math
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from conftest import GLUE_DIR, ROOT, cli_env, needs_shared
from gnlorp.gpu_table import BUDGET_S, C4_METHODS, GLUE_METHODS, GRID, REPORTED_SEEDS, SELECTION_SEED
from gnlorp.lr_selection import selection_loss

GLUE_ROWS = {"full": "Full fine-tuning", "lora": "LoRA (rank 8)", "galore": "GaLore (rank 8)",
             "gradnormlorp": "GradNormLoRP (rank 8)"}
C4_ROWS = {"full": "Full-Rank", "lora": "LoRA", "galore": "GaLore", "gradnormlorp": "GradNormLoRP",
           "relora": "ReLoRA", "switchlora": "SwitchLoRA", "apollo": "APOLLO", "apollo_mini": "APOLLO-Mini",
           "fira": "Fira"}
# The dry run's C4 lane: three of the nine methods (--c4-methods): a dense one, a projected one and a rank-free one;
# what it checks is the protocol and the lanes (every method's CUDA path runs in make gpu-check's dry run)
DRY_C4_METHODS = ("full", "gradnormlorp", "apollo_mini")


def _check_protocol(records: list[dict], methods, metric) -> None:
    """Per method: seed 0 at every grid rate; the reported seeds at one rate only, the one with the best selection
    score among seed 0's (lowest selection loss; the smaller rate of equals), taken by train.lr_choice=selection."""
    by_method = defaultdict(list)
    for r in records:
        by_method[r["config"]["method"]["name"]].append(r)
    assert sorted(by_method) == sorted(methods)
    for method, runs in by_method.items():
        assert all(r["status"] == "complete" for r in runs), method
        grid = {r["config"]["derived"]["lr"]: r for r in runs if r["config"]["seed"] == SELECTION_SEED}
        assert len(grid) == len(GRID) and len(runs) == len(GRID) + len(REPORTED_SEEDS), method
        assert max(grid) / min(grid) == pytest.approx(float(GRID[-1]) / float(GRID[0]))
        chosen = min(grid, key=lambda lr: (selection_loss(grid[lr], metric), lr))
        reported = [r for r in runs if r["config"]["seed"] != SELECTION_SEED]
        assert sorted(r["config"]["seed"] for r in reported) == sorted(REPORTED_SEEDS), method
        for r in reported:
            assert r["config"]["derived"]["lr"] == chosen, method
            assert r["config"]["derived"]["lr_choice"]["by"] == "selection", method


@needs_shared
@pytest.mark.slow  # ~2 min on the 2-core CPU: 60 tiny runs
def test_dry_run_plans_runs_the_protocol_and_builds_the_tables(tmp_path):
    assert GLUE_DIR.is_dir()
    out = tmp_path / "gpu_table"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "gnlorp.gpu_table", "--dry", "--out", str(out),
                        "--c4-methods", ",".join(DRY_C4_METHODS)], cwd=ROOT,
                       env=cli_env({"OMP_NUM_THREADS": "1"}), capture_output=True, text=True, timeout=600)
    print(f"dry run: {time.monotonic() - t0:.0f} s")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = p.stdout.splitlines()
    # the plan and its estimate come before any part starts, and the estimate fits the budget
    estimate = next(i for i, line in enumerate(lines) if line.startswith("estimate: total "))
    first_start = next(i for i, line in enumerate(lines) if line.startswith("start "))
    assert lines[0].startswith("plan: ") and estimate < first_start
    assert [line.split()[2] for line in lines[:estimate] if line.startswith("  estimate ")] == \
        ["grid", "seeds", "grid", "seeds"]
    total = float(lines[estimate].split()[2])
    assert 0 < total <= BUDGET_S
    assert sum(line.startswith("done ") and ": exit 0 in " in line for line in lines) == 4

    records = [json.loads(f.read_text()) for f in out.glob("*.json") if f.name != "gpu_table.json"]
    glue = [r for r in records if r["config"]["task"]["family"] == "glue"]
    c4 = [r for r in records if r["config"]["task"]["family"] == "c4"]
    assert len(glue) == len(GLUE_METHODS) * (len(GRID) + len(REPORTED_SEEDS))
    assert set(DRY_C4_METHODS) <= set(C4_METHODS)
    assert len(c4) == len(DRY_C4_METHODS) * (len(GRID) + len(REPORTED_SEEDS))
    assert {r["config"]["task"]["name"] for r in glue} == {"stsb"}  # the plan's first task, shrunk
    assert all(r["origin"]["sweep"] == "gpu_glue" for r in glue) and all(r["origin"]["sweep"] == "gpu_c4" for r in c4)
    _check_protocol(glue, GLUE_METHODS, "accuracy")
    _check_protocol(c4, DRY_C4_METHODS, None)
    assert all(math.isfinite(r["last"]["metrics"]["selection"]["loss"]) for r in c4)

    tables = out / "tables"
    glue_md, c4_md = (tables / "glue_bert_tiny.md").read_text(), (tables / "c4_other-sizes.md").read_text()
    assert all(f"| {row} | ours" in glue_md for row in GLUE_ROWS.values()), glue_md
    assert all(f"| {C4_ROWS[m]} | ours" in c4_md for m in DRY_C4_METHODS), c4_md
    assert (tables / "glue_bert_tiny_lr_grid.md").is_file() and (tables / "c4_other-sizes_lr_grid.md").is_file()
    summary = json.loads((out / "gpu_table.json").read_text())
    assert summary["dry_run"] and [r["rc"] for r in summary["parts"]] == [0, 0, 0, 0]
    assert summary["plan"]["estimate_s"] == pytest.approx(total, abs=0.5)
