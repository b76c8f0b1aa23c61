"""Two DDP processes (torchrun, gloo) train GradNormLoRP exactly as one process does, and stay identical.

GradNormLoRP with the randomized SVD and update_proj_gap=2 over 6 steps: every projector is computed
before steps 1, 3 and 5, so two refreshes after the first happen inside the run (each process must compute
the same randomized projector from the same all-reduced gradient). tests/e2e/ddp_worker.py runs TrainLoop
directly (the loop's DDP path: each process's share of the batch, no_sync over micro-batches, the loss
all-reduced) and dumps every rank's parameters. SwitchLoRA runs on uneven shapes and batches (a process
without rows at one step) and its candidate pools stay out of DDP's buffer broadcast."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow
WORKER = ROOT / "tests" / "e2e" / "ddp_worker.py"
sys.path.insert(0, str(WORKER.parent))
import ddp_worker  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and two, each running every case of the worker in one launch (start-up dominates)."""
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    one, two = root / "one", root / "two"
    cases = ",".join(ddp_worker.CASES)
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(one), cases], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(WORKER), str(two), cases], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True),
    ]
    for p in procs:
        try:
            out, _ = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # a desync hangs until killed: torchrun and its workers
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        assert p.returncode == 0, out[-3000:]
    return one, two


def test_two_process_ddp_matches_one_process_and_ranks_stay_identical(runs):
    one, two = (folder / "gnl" for folder in runs)
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


@pytest.mark.parametrize("case", ["switch", "switch8"])
def test_switchlora_on_uneven_shapes_and_batches_equals_one_process_bit_for_bit(runs, case):
    """SwitchLoRA (32- and 8-bit moments) on a vocabulary of 129 and 75 MLP rows, 13 examples in batches of 4:
    step 4 takes one row, so one process runs an empty micro-batch. Each process's share is one micro-batch
    and DDP halves the sum of two, so the gradients are one process's bit for bit, and so is everything
    after them: the weights, the swapped factors, the candidate pools. DDP does not broadcast the pools."""
    one, two = (folder / case for folder in runs)
    single = torch.load(one / "rank0.pt", weights_only=True)
    r0, r1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0.keys() == r1.keys() == single.keys()
    for k in single:
        assert torch.equal(r0[k], single[k]) and torch.equal(r1[k], single[k]), k
    switched = [v for k, v in single.items() if k.endswith(".switched")]
    assert len(switched) == 14 and all(v.min() > 0 for v in switched), "every layer must swap vectors"
    log1, log2 = (json.loads((f / "rank0.json").read_text()) for f in (one, two))
    assert log1["losses"] == log2["losses"] and len(log1["losses"]) == ddp_worker.STEPS
    broadcast = log2["broadcast_buffers"]
    assert any(k.endswith(".selected_A") for k in broadcast)
    assert not any(k.endswith((".candidates_A", ".candidates_B")) for k in broadcast)


DESYNC = """
import sys, time, types
import torch
import torch.distributed as dist
from gnlorp.runner import _init_distributed

cfg = types.SimpleNamespace(device="cpu", train=types.SimpleNamespace(collective_timeout=3))
_init_distributed(types.SimpleNamespace(world=2, cfg=cfg))
if dist.get_rank() == 0:  # rank 1 never joins this all-reduce
    t0 = time.perf_counter()
    try:
        dist.all_reduce(torch.ones(1))
    except RuntimeError as exc:
        print(f"failed after {time.perf_counter() - t0:.1f} s: {str(exc).splitlines()[0]}", flush=True)
        sys.exit(3)
time.sleep(60)
"""


def _torchrun_script(tmp_path, text: str, timeout: float, what: str) -> tuple[int, str]:
    """(exit code, stdout and stderr) of `text` run as a script by torchrun on 2 processes; a hang past `timeout`
    kills the whole group and fails the test, saying `what` hung."""
    script = tmp_path / "script.py"
    script.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"{what} hung: " + out[-2000:])
    return p.returncode, out


def test_a_collective_that_a_process_never_joins_fails_after_train_collective_timeout(tmp_path):
    code, out = _torchrun_script(tmp_path, DESYNC, 50, "the desynchronized all-reduce")
    assert code != 0
    line = next(line for line in out.splitlines() if "failed after" in line)
    assert 2.5 <= float(line.split("failed after ")[1].split(" s")[0]) <= 20, line


RANK0_ALONE = """
import time, types
import torch
import torch.distributed as dist
from gnlorp.distributed import wait_for_rank0
from gnlorp.runner import _init_distributed

cfg = types.SimpleNamespace(device="cpu", train=types.SimpleNamespace(collective_timeout=2))
_init_distributed(types.SimpleNamespace(world=2, cfg=cfg))
if dist.get_rank() == 0:
    time.sleep(6)  # rank 0 alone (an evaluation, a checkpoint) for longer than the collective timeout
wait_for_rank0()
t = torch.ones(1)
dist.all_reduce(t)
print(f"rank {dist.get_rank()} reduced {t.item():.0f}", flush=True)
dist.destroy_process_group()  # every group, the waiting one too (gloo aborts at exit otherwise)
"""


def test_a_wait_for_rank0_working_alone_outlasts_the_collective_timeout(tmp_path):
    code, out = _torchrun_script(tmp_path, RANK0_ALONE, 120, "the wait for rank 0")
    assert code == 0, out[-2000:]
    assert sorted(re.findall(r"rank \d reduced \d", out)) == ["rank 0 reduced 2", "rank 1 reduced 2"]
