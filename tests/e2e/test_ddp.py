"""Two DDP processes (torchrun, gloo) train GradNormLoRP exactly as one process does, and stay identical.

GradNormLoRP with the randomized SVD and update_proj_gap=2 over 6 steps: every projector is computed
before steps 1, 3 and 5, so two refreshes after the first happen inside the run (each process must compute
the same randomized projector from the same all-reduced gradient). tests/e2e/ddp_worker.py runs TrainLoop
directly (the loop's DDP path: each process's share of the batch, no_sync over micro-batches, the loss
all-reduced) and dumps every rank's parameters."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow
WORKER = ROOT / "tests" / "e2e" / "ddp_worker.py"


def test_two_process_ddp_matches_one_process_and_ranks_stay_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(one)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(WORKER), str(two)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]

    r0, r1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = torch.load(one / "rank0.pt", weights_only=True)
    assert r0.keys() == r1.keys() == single.keys()
    assert sum(k.endswith(".direction") for k in r0) == 14 and sum(k.endswith(".magnitude") for k in r0) == 14
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"rank 0 and rank 1 differ in {k}"
    assert max((r0[k] - single[k]).abs().max().item() for k in r0) <= 1e-6

    log1, log2, log2b = (json.loads(p.read_text()) for p in (one / "rank0.json", two / "rank0.json", two / "rank1.json"))
    for log in (log1, log2, log2b):  # every projector refreshed by every process, twice after the first
        assert len(log["refreshes"]) == 14 and all(steps == [1, 3, 5] for steps in log["refreshes"].values())
    c1, c2 = log1["losses"], log2["losses"]
    assert [s for s, _ in c1] == [s for s, _ in c2] == list(range(1, 7))
    # up to step 3 the projectors are those of step 1; steps 4-6 follow the refreshes at steps 3 and 5
    assert max(abs(a - b) for (_, a), (_, b) in zip(c1[:3], c2[:3])) <= 1e-4
    assert max(abs(a - b) for (_, a), (_, b) in zip(c1[3:], c2[3:])) <= 1e-4
    assert c2[-1][1] < c2[0][1] - 0.2, "the run must train (loss falls)"
