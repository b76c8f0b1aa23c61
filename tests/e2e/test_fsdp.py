"""FSDP2 (train.parallel=fsdp) on the CPU (gloo) against one process, for every method (tests/e2e/fsdp_worker.py).

One launch per process count runs every case (start-up dominates): 20 steps, projectors computed before steps
1, 9 and 17 (exact and randomized SVD). Checked: loss curves to 1e-4 and final parameters to 1e-5 (8-bit with
a left projection: see the test), Adam moments per rank = one process's / 2, the optimizer's communication
per step = optim/sharded.projection_bytes_per_step, a stop/resume from a sharded (DCP) checkpoint, a damaged
checkpoint refused, and a 4-process run."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import GLUE_DIR, ROOT, needs_shared

WORKER = ROOT / "tests" / "e2e" / "fsdp_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
import fsdp_worker  # noqa: E402

ALL = list(fsdp_worker.CASES)
ODD = list(fsdp_worker.UNEVEN_CASES)
PROJECTED = [c for c, spec in fsdp_worker.CASES.items() if spec[0] in ("galore", "gradnormlorp")]
# one layer's projected weights (q, k, v, o, gate, up, down) as (m, n), for the tiny LLaMA of the worker
H, I = fsdp_worker.DIMS["hidden_size"], fsdp_worker.DIMS["intermediate_size"]
SHAPES = [(H, H)] * 4 + [(I, H), (I, H), (H, I)]


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    return env


def _launch(nproc: int, out, cases, *extra):
    cmd = [sys.executable, str(WORKER), str(out), ",".join(cases), *map(str, extra)]
    if nproc > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait(*procs, timeout=600):
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # a desync hangs until killed: torchrun and its workers
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        assert p.returncode == 0, out[-4000:]


def _load(folder, case):
    return json.loads((folder / f"{case}.json").read_text()), torch.load(folder / f"{case}.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _loss_diff(a, b) -> float:
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, fsdp_worker.STEPS + 1))
    return max(abs(x - y) for (_, x), (_, y) in zip(a, b))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, two processes, and two processes stopped after step 10 then resumed."""
    root = tmp_path_factory.mktemp("fsdp")
    one, two, resumed, ckpt = (root / n for n in ("one", "two", "resumed", "ckpt"))
    stop_cases = ["galore32", "gnl8", "galore_full"]
    _wait(_launch(1, one, ALL + ODD), _launch(2, two, ALL + ODD))
    _wait(_launch(2, resumed, stop_cases, "--stop", 10, ckpt))
    stopped = {c: _load(resumed, c)[0]["losses"] for c in stop_cases}
    _wait(_launch(2, resumed, stop_cases, "--resume", ckpt))
    return dict(one=one, two=two, resumed=resumed, ckpt=ckpt, stop_cases=stop_cases, stopped=stopped)


@pytest.mark.slow
@pytest.mark.parametrize("case", ALL)
def test_two_process_fsdp_matches_one_process(runs, case):
    (log1, p1), (log2, p2) = _load(runs["one"], case), _load(runs["two"], case)
    assert log1["optimizer"] == log2["optimizer"]
    assert log2["losses"][-1][1] < log2["losses"][0][1] - 0.1, "the run must train"
    assert _loss_diff(log1["losses"], log2["losses"]) <= 1e-4
    # 8-bit with a left or two-sided projection: R = P^T G is a sum over the ranks' rows; exact_projection
    # sums it in float64 and rounds once, as one process does (float32 sums: 3e-4 here, optim/sharded.py)
    assert _max_diff(p1, p2) <= 1e-5
    if case == "relora":  # merged into W and restarted after steps 8 and 16, on one process and on two
        for params in (p1, p2):
            assert {v.item() for k, v in params.items() if k.endswith(".resets")} == {2}
    if case in PROJECTED:
        for log in (log1, log2):  # every projector computed at steps 1, 9 and 17, by every process
            assert len(log["refreshes"]) == 14 and all(s == [1, 9, 17] for s in log["refreshes"].values())
    if log2["weightnorm_row_shard_error"] is not None and case.startswith("gnl"):
        assert log2["weightnorm_row_shard_error"] == 0.0


def _uneven_matches(log1, p1, logn, pn, case) -> None:
    """8-bit: bit for bit; 32-bit: losses and weights within 1e-5."""
    assert _loss_diff(log1["losses"], logn["losses"]) <= 1e-5
    if "8" in case:
        assert p1.keys() == pn.keys() and all(torch.equal(p1[k], pn[k]) for k in p1)
    else:
        assert _max_diff(p1, pn) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("case", ODD)
def test_uneven_shapes_and_batches_on_two_processes_match_one_process(runs, case):
    """A vocabulary of 129 and 75 MLP rows (8-bit row shards off the 256-element blocks, shards at unaligned
    offsets in FSDP's buffers), 61 examples (partial last batches: [2, 1] and [2] micro-batches, or a process
    without rows): 8-bit runs equal one process bit for bit (each process's gradient is one process's
    micro-batch's, fsdp_worker.CASES), 32-bit ones within 1e-5."""
    (log1, p1), (log2, p2) = _load(runs["one"], case), _load(runs["two"], case)
    assert log2["losses"][-1][1] < log2["losses"][0][1] - 0.1, "the run must train"
    _uneven_matches(log1, p1, log2, p2, case)


@pytest.mark.slow
def test_uneven_shapes_on_three_processes_match_one_process(runs, tmp_path):
    """Over 3 processes (43 and 25 rows a shard) the averaged gradient differs from one process's in the last
    bits, which 8-bit moments amplify; the 8-bit case therefore steps on gradients drawn from (name, step)
    (fsdp_worker.fixed_gradients), which isolates the sharded optimizer: bit for bit. The 32-bit case trains
    on the data, with batches of 8 split 3/3/2 and a last one of 5 split 2/2/1."""
    fixed = ["gnl8_odd" + fsdp_worker.FIXED]  # its embeddings and LM head step dense, its MLP projected
    one, three = tmp_path / "one", tmp_path / "three"
    _wait(_launch(1, one, fixed), _launch(3, three, ["galore32_odd", *fixed]))
    _uneven_matches(*_load(runs["one"], "galore32_odd"), *_load(three, "galore32_odd"), "galore32_odd")
    for case in fixed:
        (log1, p1), (log3, p3) = _load(one, case), _load(three, case)
        assert [s for s, _ in log3["losses"]] == list(range(1, fsdp_worker.STEPS + 1))
        assert p1.keys() == p3.keys() and all(torch.equal(p1[k], p3[k]) for k in p1), case


@pytest.mark.slow
@pytest.mark.parametrize("case", ALL)
def test_moments_are_split_over_the_ranks(runs, case):
    single = _load(runs["one"], case)[0]["state_bytes"][0]
    ranks = _load(runs["two"], case)[0]["state_bytes"]
    assert single["moments"] > 0
    # each rank holds half, up to the padding of a flat slice of R to whole 8-bit blocks (2 x 256 bytes plus
    # two block scales per projected weight)
    padding = 14 * (2 * 256 + 8) if "8" in case else 0
    for r in ranks:
        assert single["moments"] / 2 <= r["moments"] <= single["moments"] / 2 + padding
        assert r["projectors"] == single["projectors"]  # replicated: every rank projects its rows


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in PROJECTED])
def test_projection_communication_equals_the_formula(runs, case):
    from gnlorp.optim.sharded import projection_bytes_per_step

    method, overrides, min8, _ = fsdp_worker.CASES[case]
    eight_bit = overrides.get("optim_bits", 32) == 8
    steps = _load(runs["two"], case)[0]["comm"]
    assert len(steps) == fsdp_worker.STEPS
    for step, colls in enumerate(steps, start=1):
        measured = {"reduce_scatter": 0, "all_gather": 0}
        for name, nbytes in colls["optimizer"]:
            measured["reduce_scatter" if "reduce_scatter" in name else "all_gather"] += nbytes
        expected = {"reduce_scatter": 0, "all_gather": 0}
        for shape in SHAPES * 2:
            low = fsdp_worker.CASES[case][1]
            f = projection_bytes_per_step(shape, low["rank"], low.get("proj_type", "std"), 2,
                                          eight_bit and _low_numel(shape, low) >= min8,
                                          exact=low.get("exact_projection", False))
            expected["reduce_scatter"] += f["reduce_scatter"]
            expected["all_gather"] += f["all_gather"] + (f["refresh_all_gather"] if step in (1, 9, 17) else 0)
        assert measured == expected, f"step {step}"
        assert all(n in ("reduce_scatter_tensor", "all_gather_into_tensor") for n, _ in colls["optimizer"])
        # the gradient's own reduce-scatter (FSDP, in backward) moves at least every projected weight once
        grad_rs = sum(b for n, b in colls["backward"] if "reduce_scatter" in n)
        assert grad_rs >= 2 * sum(m * n for m, n in SHAPES) * 4


def _low_numel(shape, low):
    from gnlorp.optim.projector import low_rank_shape, projection_side

    a, b = low_rank_shape(shape, low["rank"], projection_side(shape, low.get("proj_type", "std")))
    return a * b


def test_formula_by_hand():
    from gnlorp.optim.sharded import projection_bytes_per_step

    # right side (std, m >= n): local, no communication; the refresh all-gathers the 128 x 64 gradient
    assert projection_bytes_per_step((128, 64), 8, "std", 2, False) == {
        "reduce_scatter": 0, "all_gather": 0, "refresh_all_gather": 128 * 64 * 4}
    # left side (std, m < n): R is 8 x 128 = 1024 elements, 512 per rank, reduce-scattered and all-gathered
    assert projection_bytes_per_step((64, 128), 8, "std", 2, False)["reduce_scatter"] == 1024 * 4
    # 8-bit: each rank's slice rounded up to whole 256-element blocks: 4 ranks x 256
    assert projection_bytes_per_step((64, 128), 8, "std", 4, True)["all_gather"] == 4 * 256 * 4
    # right side in 8-bit with shards not starting on a block (16 rows x 8 = 128 elements): the flat way,
    # R's 64 x 8 = 512 elements padded to 4 ranks x one 256-element block
    assert projection_bytes_per_step((64, 64), 8, "std", 4, True)["reduce_scatter"] == 4 * 256 * 4
    assert projection_bytes_per_step((64, 64), 8, "std", 2, True)["reduce_scatter"] == 0  # 32 x 8 = 256: local
    # exact_projection: the left side's partial sums travel as float64 (8 bytes), the direction as float32;
    # full (r x r = 64 elements, 32 a rank): G Q^T's 64 x 8 rows gathered instead of R reduce-scattered
    f64 = projection_bytes_per_step((64, 128), 8, "std", 2, False, exact=True)
    assert (f64["reduce_scatter"], f64["all_gather"]) == (1024 * 8, 1024 * 4)
    full = projection_bytes_per_step((64, 128), 8, "full", 2, False, exact=True)
    assert (full["reduce_scatter"], full["all_gather"]) == (0, 64 * 8 * 4 + 64 * 4)


@pytest.mark.slow
def test_stop_and_resume_from_a_sharded_checkpoint_equals_an_uninterrupted_run(runs):
    for case in runs["stop_cases"]:
        assert runs["stopped"][case][-1][0] == 10
        log_r, p_r = _load(runs["resumed"], case)
        log_u, p_u = _load(runs["two"], case)
        assert [s for s, _ in log_r["losses"]] == list(range(11, 21))
        assert _max_diff(p_r, p_u) <= 1e-6
        assert max(abs(a - b) for (_, a), (_, b) in zip(log_r["losses"], log_u["losses"][10:])) <= 1e-6
        if case in PROJECTED:  # the resumed run refreshed at 17 only: step 9's projector came from the checkpoint
            assert all(s == [17] for s in log_r["refreshes"].values())


@pytest.mark.slow
def test_a_damaged_sharded_checkpoint_is_refused_and_kept(runs):
    from gnlorp.errors import UserError
    from gnlorp.sharded_checkpoint import MANIFEST, verify

    folder = runs["ckpt"] / "galore32"
    verify(folder)
    shard = next(f for f in sorted(folder.iterdir()) if f.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its SHA-256"):
        verify(folder)
    assert shard.exists() and (folder / MANIFEST).exists()


@pytest.mark.slow
def test_four_processes_match_one_process(runs, tmp_path):
    one, four = runs["one"], tmp_path / "four"  # the fixture's one-process run of the same cases
    cases = ["galore32", "gnl8"]
    _wait(_launch(4, four, cases))
    for case in cases:
        (log1, p1), (log4, p4) = _load(one, case), _load(four, case)
        assert _loss_diff(log1["losses"], log4["losses"]) <= 1e-4
        assert _max_diff(p1, p4) <= (1e-5 if case == "galore32" else 2e-3)


def _launch_run_py(nproc: int, cwd, folder, *args):
    """`run.py` on a tiny C4 job (conftest.tiny_c4) writing into `folder`, under torchrun when nproc > 1."""
    from conftest import tiny_c4

    cmd = [sys.executable, str(ROOT / "run.py"), *tiny_c4(folder, *args)]
    if nproc > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _results_match(one, two) -> tuple[dict, dict]:
    """The two folders' single results: complete, same loss curve (1e-4) and validation loss (1e-4)."""
    (r1,), (r2,) = ([json.loads(p.read_text()) for p in (f / "results").glob("*.json")] for f in (one, two))
    assert r1["status"] == r2["status"] == "complete"
    assert [s for s, _ in r2["loss_curve"]] == [s for s, _ in r1["loss_curve"]]
    assert max(abs(a - b) for (_, a), (_, b) in zip(r1["loss_curve"], r2["loss_curve"])) <= 1e-4
    assert abs(r1["last"]["metrics"]["validation"]["loss"] - r2["last"]["metrics"]["validation"]["loss"]) <= 1e-4
    return r1, r2


@pytest.mark.slow
def test_run_py_fsdp_stop_resume_and_merged_model_match_one_process(tmp_path):
    """torchrun run.py train.parallel=fsdp: stopped at step 6, resumed from the DCP folder to step 12, a merged
    vanilla model written from the shards; the loss curve and the validation loss equal one process's."""
    from transformers import AutoModelForCausalLM

    def launch(nproc, folder, *extra):
        return _launch_run_py(nproc, tmp_path, folder, "method=gradnormlorp", "method.svd=randomized",
                              "method.update_proj_gap=4", *extra)

    one, two = tmp_path / "one", tmp_path / "two"
    fsdp = ("train.parallel=fsdp", "save_model=true")
    first = launch(2, two, *fsdp, "train.stop_at_step=6")
    _wait(launch(1, one))
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0 and "last.dcp" in out, out[-3000:]
    _wait(launch(2, two, *fsdp, "resume=true"))
    _results_match(one, two)
    (model_dir,) = (two / "results" / "models").iterdir()
    merged = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(merged.model.layers[0].self_attn.q_proj).__name__ == "Linear"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_run_py_fsdp_peft_methods_built_on_meta_match_one_process(tmp_path, method):
    """Under FSDP the ranks but 0 build the LLaMA on the meta device and wrap it with peft there; rank 0's
    weights (LoRA's random A included) reach every shard: the run equals one process's."""
    args = (f"method={method}", "rank=4", "train.max_steps=6", "train.parallel=fsdp")
    one, two = tmp_path / "one", tmp_path / "two"
    _wait(_launch_run_py(1, tmp_path, one, *args), _launch_run_py(2, tmp_path, two, *args))
    _results_match(one, two)


@pytest.mark.slow
@needs_shared
def test_run_py_glue_fsdp_with_a_partial_last_batch_finishes_and_matches_one_process(tmp_path):
    """61 RTE examples in batches of 8, micro-batches of 2: the last batch has 5 rows, [2, 1] on rank 0 and
    [2] on rank 1, which hung FSDP until every process ran as many micro-batches. Dropout off, so that the
    loss curve can equal one process's."""
    def launch(nproc, folder, *extra):
        args = ["task=glue/rte", "model=bert_tiny", f"task.data_dir={GLUE_DIR}", "task.max_train_samples=61",
                "task.max_eval_samples=32", "train.batch_size=8", "train.micro_batch_size=2", "train.epochs=1",
                "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0", "train.progress=false",
                "logger.mode=disabled", f"results_dir={folder}/results", f"checkpoint_dir={folder}/checkpoints",
                *extra]
        cmd = [sys.executable, str(ROOT / "run.py"), *args]
        if nproc > 1:
            cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        return subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    one, two = tmp_path / "one", tmp_path / "two"
    _wait(launch(1, one), launch(2, two, "train.parallel=fsdp"), timeout=240)
    (r1,), (r2,) = ([json.loads(p.read_text()) for p in (f / "results").glob("*.json")] for f in (one, two))
    assert r1["status"] == r2["status"] == "complete"
    assert [s for s, _ in r1["loss_curve"]] == [s for s, _ in r2["loss_curve"]] == list(range(1, 9))
    assert max(abs(a - b) for (_, a), (_, b) in zip(r1["loss_curve"], r2["loss_curve"])) <= 1e-5
    assert r1["last"]["metrics"] == r2["last"]["metrics"]
