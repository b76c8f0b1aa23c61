"""Runs that survive: bad input, interruptions, NaNs and crashes lose nothing and explain themselves.

Most cases run `run.py` in a subprocess, as a user would (cwd, results_dir and checkpoint_dir under tmp_path);
the rest call `gnlorp.runner.run` in-process where a subprocess would add only startup time.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from conftest import (C4_DIR, ROOT, cli_env, compose, needs_shared, run_cli, tiny_c4, tiny_glue,
                      with_overrides)

pytestmark = needs_shared


def _quiet(*_):
    pass


# One torch thread: on a busy 2-core machine two OpenMP threads per run are many times slower than one.
def _tiny_glue(tmp, *extra):
    return tiny_glue(tmp, "train.num_threads=1", *extra)


def _tiny_c4(tmp, *extra):
    return tiny_c4(tmp, "train.num_threads=1", *extra)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


_with, _env, _cli = with_overrides, cli_env, run_cli


def _records(results: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(results.glob("*.json"))]


def _load_model(path: Path) -> dict:
    from gnlorp.checkpoint import load_checkpoint  # verifies the checksum too

    return load_checkpoint(path, map_location="cpu")["model"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ============================================================================================ bad input
def _write_rte(root: Path, train: str) -> Path:
    """A fake glue_data folder holding RTE/train.tsv (as given) and a valid two-row RTE/dev.tsv."""
    rte = root / "glue_data" / "RTE"
    rte.mkdir(parents=True)
    (rte / "train.tsv").write_text(train)
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n"
                                 "0\tA dog runs.\tAn animal runs.\tentailment\n"
                                 "1\tA cat sleeps.\tA cat runs.\tnot_entailment\n")
    return root / "glue_data"


_RTE_HEAD = "index\tsentence1\tsentence2\tlabel\n"
_RTE_ROWS = "0\tA dog runs.\tAn animal runs.\tentailment\n1\tA cat sleeps.\tA cat runs.\tnot_entailment\n"
_WRONG_HEADER = "index\tsentence1\tsent2\tlabel\n" + _RTE_ROWS
_SHORT_ROW = _RTE_HEAD + _RTE_ROWS + "2\tonly two columns\n"
_BAD_LABEL = _RTE_HEAD + "0\ta\tb\tmaybe\n"


def _unreadable(tmp: Path) -> Path:
    folder = _write_rte(tmp, _RTE_HEAD + _RTE_ROWS)
    folder.chmod(0)
    return folder


def _bad_c4(tmp: Path) -> Path:
    folder = tmp / "c4"
    folder.mkdir()
    with gzip.open(folder / "c4-train.00000-of-01024.json.gz", "wt") as f:
        f.write("this is plain text, not JSON lines\n")
    (folder / "c4-validation.00000-of-00008.json.gz").symlink_to(next(C4_DIR.glob("c4-validation.*.json.gz")))
    return folder


def _no_bnb(tmp: Path) -> dict:
    fake = tmp / "fake_site" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('bitsandbytes is broken here (simulated)')\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp / "fake_site"), os.environ.get("PYTHONPATH", "")])}


def _no_hub_cache(tmp: Path) -> dict:
    """Offline, with empty Hugging Face caches and no GLUE folder from the environment."""
    return {"HF_HOME": str(tmp / "hf_home"), "HF_HUB_CACHE": None, "HF_DATASETS_CACHE": None,
            "HUGGINGFACE_HUB_CACHE": None, "GNLORP_GLUE_DIR": None, "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _glue(tmp, *extra):
    return _with(_tiny_glue(tmp), *extra)


def _c4(tmp, *extra):
    return _with(_tiny_c4(tmp), *extra)


HYDRA, OURS = "hydra", "ours"  # who explains: Hydra's own group/key errors, or the runner's `error: <sentence>`
# id -> (who, args for tmp_path, extra env for tmp_path or None, fragments the output must contain, max seconds)
BAD_INPUT = {
    "unknown_method": (HYDRA, lambda t: _glue(t, "method=sgd"), None, ["method/sgd", "gradnormlorp", "galore"], None),
    "unknown_task": (HYDRA, lambda t: _glue(t, "task=glue/rtee"), None, ["glue/rtee", "glue/rte"], None),
    "unknown_model": (HYDRA, lambda t: _glue(t, "model=gpt2"), None, ["model/gpt2", "bert_tiny", "roberta-base"], None),
    "unknown_precision": (HYDRA, lambda t: _glue(t, "precision=fp8"), None, ["precision/fp8", "bf16", "8bit"], None),
    "unknown_config_key": (HYDRA, lambda t: _glue(t, "train.nonexistent=1"), None, ["train.nonexistent"], None),
    "rank_zero": (OURS, lambda t: _glue(t, "method=galore", "rank=0"), None, ["rank=0", ">= 1"], None),
    "rank_above_smallest_matrix": (OURS, lambda t: _glue(t, "method=galore", "rank=1024"), None,
                                   ["rank=1024", "rank <= 32"], None),
    "lr_zero": (OURS, lambda t: _glue(t, "method=full", "train.lr=0"), None, ["train.lr=0", "> 0"], None),
    "lr_negative": (OURS, lambda t: _glue(t, "method=lora", "train.lr=-1e-4"), None, ["train.lr=-0.0001", "> 0"], None),
    "data_dir_missing": (OURS, lambda t: _glue(t, f"task.data_dir={t / 'nowhere'}"), None,
                         ["nowhere does not exist", "task.data_dir"], None),
    "data_dir_not_a_folder": (OURS, lambda t: _glue(t, f"task.data_dir={ROOT / 'run.py'}"), None,
                              ["run.py is not a folder", "task.data_dir"], None),
    "data_dir_unreadable": (OURS, lambda t: _glue(t, f"task.data_dir={_unreadable(t)}"), None,
                            ["glue_data is not readable", "permissions"], None),
    "glue_wrong_header": (OURS, lambda t: _glue(t, f"task.data_dir={_write_rte(t, _WRONG_HEADER)}"), None,
                          ["train.tsv has the header", "'sent2'", "sentence1, sentence2, label"], None),
    "glue_malformed_row": (OURS, lambda t: _glue(t, f"task.data_dir={_write_rte(t, _SHORT_ROW)}"), None,
                           ["train.tsv, line 4", "expected 4", "found 2"], None),
    "glue_bad_label": (OURS, lambda t: _glue(t, f"task.data_dir={_write_rte(t, _BAD_LABEL)}"), None,
                       ["train.tsv, line 2", "'maybe'", "entailment, not_entailment"], None),
    "empty_dataset": (OURS, lambda t: _glue(t, f"task.data_dir={_write_rte(t, _RTE_HEAD)}"), None,
                      ["train.tsv has no data rows"], None),
    "c4_shard_not_json": (OURS, lambda t: _c4(t, f"task.data_dir={_bad_c4(t)}"), None,
                          ["c4-train.00000-of-01024.json.gz:1 is not a JSON line"], None),
    "8bit_without_bitsandbytes": (OURS, lambda t: _glue(t, "precision=8bit", "method=galore"), _no_bnb,
                                  ["precision=8bit", "bitsandbytes", "precision=bf16"], None),
    "cuda_without_cuda": (OURS, lambda t: _glue(t, "device=cuda"), None, ["device=cuda", "device=cpu"], None),
    "offline_hub_model": (OURS, lambda t: _glue(t, "model=roberta-base"), _no_hub_cache,
                          ["'FacebookAI/roberta-base' is not available offline", "model=minilm"], 20),
    "offline_hub_dataset": (OURS, lambda t: [a for a in _tiny_glue(t) if not a.startswith("task.data_dir=")],
                            _no_hub_cache, ["GLUE task rte is not available offline", "task.data_dir"], 20),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_in_one_sentence_and_writes_no_result(tmp_path, case):
    if case == "cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if case == "data_dir_unreadable" and os.geteuid() == 0:
        pytest.skip("root reads any folder; data_dir_not_a_folder covers an unusable data_dir")
    who, make_args, make_env, fragments, max_seconds = BAD_INPUT[case]
    p = _cli(make_args(tmp_path), tmp_path, make_env(tmp_path) if make_env else None)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in:\n{out[-2000:]}"
    if who == OURS:
        errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and all(f in errors[0] for f in fragments), p.stderr[-2000:]
        assert p.returncode == 2
    results = tmp_path / "results"
    assert not results.exists() or not any(results.iterdir()), list(results.iterdir())
    if max_seconds:
        assert p.seconds < max_seconds, f"{case} took {p.seconds:.1f}s"


def test_a_traceback_only_when_asked_for(tmp_path):
    p = _cli(_glue(tmp_path, "train.lr=0"), tmp_path, {"HYDRA_FULL_ERROR": "1"})
    assert p.returncode == 2
    assert "Traceback" in p.stderr and "error: train.lr=0.0 is out of range" in p.stderr


def test_keep_going_reports_a_failed_job_and_finishes_the_sweep(tmp_path):
    # job 0 fails its config check (lr 0: exit 2, nothing written); job 1 must still run to completion
    args = ["-m", *_with(_tiny_glue(tmp_path), "train.epochs=1"), "method=full", "train.lr=0,1e-3"]
    stop = _cli(args, tmp_path)
    assert stop.returncode == 2 and not (tmp_path / "results").exists(), stop.stderr[-2000:]
    going = _cli([*args, "keep_going=true"], tmp_path)
    assert going.returncode == 1, going.stderr[-2000:]  # the sweep went on, and says a point failed
    assert "error: train.lr=0.0 is out of range" in going.stderr
    assert "keep_going=true: this job failed (exit 2); going on with the sweep." in going.stderr
    assert going.stderr.rstrip().splitlines()[-1].startswith(
        "keep_going=true: the sweep's 2 point(s) ended: 1 complete, 1 failed. Failed: #0 train.lr=0 (exit 2);")
    assert [r["status"] for r in _records(tmp_path / "results")] == ["complete"]


def test_ctrl_c_outside_training_is_one_sentence_and_exit_130(monkeypatch, capsys):
    import gnlorp.runner
    from gnlorp.cli import run_and_exit
    from omegaconf import OmegaConf

    def interrupted(cfg, **_):
        raise KeyboardInterrupt

    monkeypatch.setattr(gnlorp.runner, "run", interrupted)
    with pytest.raises(SystemExit) as stop:
        run_and_exit(OmegaConf.create({"keep_going": True}))
    assert stop.value.code == 130  # a Ctrl-C ends a sweep even with keep_going
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted (Ctrl-C) outside training") and err.count("\n") == 1, err


def test_config_checks_need_neither_torch_nor_peft():
    """Why a bad value answers in about a second: importing the runner loads no heavy library."""
    code = "import sys, gnlorp.runner; print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


# ======================================================================================= interruptions
def _run_until_signal(args, tmp_path, sig, env_extra=None, timeout=300):
    """Start run.py, send `sig` once it prints its first evaluation line; return (returncode, output)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=_env(env_extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines, sent = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if not sent and line.startswith("eval step"):
                proc.send_signal(sig)
                sent = True
        proc.wait()
    finally:
        watchdog.cancel()
    assert sent, "".join(lines)[-3000:]
    return proc.returncode, "".join(lines)


SIGNAL_CASES = {  # extra overrides, signal, exit status, resume through the CLI (else in-process)
    "galore-SIGINT": (["method=galore"], signal.SIGINT, 130, True),
    "gradnormlorp-SIGTERM": (["method=gradnormlorp"], signal.SIGTERM, 143, False),
    # bitsandbytes 8-bit states (without bf16 autocast, 25-50x slower on CPUs without native bf16): bit-exact too
    "8bit-gradnormlorp-SIGTERM": (["method=gradnormlorp", "precision=8bit", "precision.autocast=null"], signal.SIGTERM, 143, False),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SIGNAL_CASES))
def test_signal_checkpoints_and_resume_matches_an_uninterrupted_run(tmp_path, case):
    extra, sig, code, resume_cli = SIGNAL_CASES[case]
    common = [*extra, "method.update_proj_gap=4", "train.max_steps=10", "train.eval_every=2", "task.eval_tokens=256"]
    args = _tiny_c4(tmp_path / "b", *common)
    (tmp_path / "b").mkdir()
    rc, out = _run_until_signal(args, tmp_path / "b", sig)
    assert rc == code, out[-3000:]
    assert "Traceback" not in out and "resume=true" in out, out[-3000:]
    [rec] = _records(tmp_path / "b" / "results")
    assert rec["status"] == "incomplete"
    stopped = rec["train"]["steps"]
    assert 2 <= stopped < 10 and f"Stopped at step {stopped} (received {sig.name})" in out
    ckpt = tmp_path / "b" / "checkpoints" / rec["run_name"] / "last.pt"
    assert torch.load(ckpt, weights_only=True)["position"]["step"] == stopped
    assert not list(ckpt.parent.glob("*.tmp-*"))

    if resume_cli:
        p = _cli(args + ["resume=true"], tmp_path / "b")
        assert p.returncode == 0, p.stderr[-3000:]
        said = p.stdout
        [rec] = _records(tmp_path / "b" / "results")
    else:
        lines = []
        from gnlorp.runner import run

        rec = run(compose(args + ["resume=true"]), echo=lines.append).record
        said = "\n".join(lines)
    assert f"Resumed from {ckpt} at step {stopped} of 10." in said
    assert rec["status"] == "complete" and rec["train"]["steps"] == 10

    straight = _run_inprocess(_tiny_c4(tmp_path / "a", *common))
    assert straight.status == "complete"
    a = _load_model(tmp_path / "a" / "checkpoints" / rec["run_name"] / "last.pt")
    assert _max_diff(a, _load_model(ckpt)) <= 1e-6
    assert [s for s, _ in straight.record["loss_curve"]] == [s for s, _ in rec["loss_curve"]] == list(range(1, 11))
    assert straight.record["loss_curve"] == rec["loss_curve"]


def _run_inprocess(args):
    from gnlorp.runner import run

    return run(compose(args), echo=_quiet)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_stop_at_step_then_resume_matches_an_uninterrupted_run(tmp_path, method):
    common = [f"method={method}", "train.max_steps=8", "train.eval_every=4"]
    part = _run_inprocess(_tiny_c4(tmp_path / "b", *common, "train.stop_at_step=3"))
    assert (part.status, part.exit_code, part.record["train"]["steps"]) == ("incomplete", 0, 3)
    assert json.loads(part.path.read_text())["status"] == "incomplete"
    resumed = _run_inprocess(_tiny_c4(tmp_path / "b", *common, "resume=true"))
    assert resumed.status == "complete" and resumed.record["notes"][0].endswith("at step 3")
    straight = _run_inprocess(_tiny_c4(tmp_path / "a", *common))
    name = straight.path.stem
    a = _load_model(tmp_path / "a" / "checkpoints" / name / "last.pt")
    b = _load_model(tmp_path / "b" / "checkpoints" / name / "last.pt")
    assert _max_diff(a, b) <= 1e-6
    assert straight.record["loss_curve"] == resumed.record["loss_curve"]


def test_a_damaged_checkpoint_is_refused_at_resume_and_kept(tmp_path):
    from gnlorp.errors import UserError

    common = ["method=gradnormlorp", "train.max_steps=4", "train.eval_every=null"]
    part = _run_inprocess(_tiny_c4(tmp_path, *common, "train.stop_at_step=2"))
    assert part.status == "incomplete"
    ckpt = tmp_path / "checkpoints" / part.path.stem / "last.pt"
    raw = bytearray(ckpt.read_bytes())
    mid = len(raw) // 2
    assert raw[mid:mid + 16] != struct.pack("<4f", *[1234.5] * 4)
    raw[mid:mid + 16] = struct.pack("<4f", *[1234.5] * 4)  # four float32 values overwritten in the middle
    ckpt.write_bytes(bytes(raw))
    result_before = part.path.read_bytes()
    with pytest.raises(UserError) as info:
        _run_inprocess(_tiny_c4(tmp_path, *common, "resume=true"))
    assert str(info.value) == (f"checkpoint {ckpt} is damaged (checksum mismatch): it was kept; "
                               "delete it to start over or restore it.")
    assert ckpt.read_bytes() == bytes(raw), "a refused checkpoint is kept as it was"
    assert part.path.read_bytes() == result_before, "a refused resume writes no result"


def test_a_result_that_cannot_be_written_is_not_complete(tmp_path, monkeypatch):
    from gnlorp import record
    from gnlorp.errors import UserError

    real = record.atomic_write_bytes

    def disk_full_for_the_final_record(path, data, setting="results_dir"):
        if b'"status": "complete"' in data:
            return _raise_enospc_via(real, path, data, monkeypatch)
        return real(path, data, setting)

    monkeypatch.setattr(record, "atomic_write_bytes", disk_full_for_the_final_record)
    args = _with(_tiny_c4(tmp_path, "method=full", "train.max_steps=2", "train.eval_every=null",
                          "train.checkpoint_every=1"), "keep_checkpoint=false")
    with pytest.raises(UserError) as info:  # run.py: "error: <message>", exit 2
        _run_inprocess(args)
    assert str(info.value).startswith(f"could not write {tmp_path / 'results'}/")
    assert str(info.value).endswith(".json: no space left on device; free disk space or set results_dir to a disk "
                                    "with room.")
    assert not list((tmp_path / "results").glob("*.json")) and not list((tmp_path / "results").glob("*.tmp-*"))
    assert list((tmp_path / "checkpoints").rglob("last.pt")), "the training is not lost: its checkpoint stays"


def _raise_enospc_via(real, path, data, monkeypatch):
    """The real atomic write with the disk filling at fsync: the UserError comes from record.py itself."""
    import errno

    from gnlorp import record

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(record.os, "fsync", full)
        real(path, data)


# ============================================================================================== NaN / Inf
def test_huge_learning_rate_stops_at_the_step_naming_the_parameter(tmp_path):
    p = _cli(_tiny_c4(tmp_path, "method=full", "train.lr=1e6", "train.grad_clip=0"), tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 3, out[-3000:]
    assert "Traceback" not in out
    line = next(line for line in out.splitlines() if line.startswith("error: Training stopped at step"))
    assert "step 2:" in line and "model.embed_tokens.weight" in line and "train.on_nonfinite=skip" in line
    [rec] = _records(tmp_path / "results")
    assert rec["status"] == "failed" and rec["train"]["steps"] == 1
    assert rec["notes"] == [line.removeprefix("error: ")]


def _nan_loss_at(monkeypatch, steps: set[int]):
    """Make the LLaMA training forward return a NaN loss on the given (1-based) training calls."""
    from transformers import LlamaForCausalLM

    forward = LlamaForCausalLM.forward
    calls = {"n": 0}

    def patched(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in steps:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", patched)


def test_nan_loss_stops_the_run_as_failed(tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, {3})
    out = _run_inprocess(_tiny_c4(tmp_path, "method=gradnormlorp", "train.max_steps=6", "train.eval_every=null"))
    assert (out.status, out.exit_code) == ("failed", 3)
    rec = json.loads(out.path.read_text())
    assert rec["status"] == "failed" and rec["train"]["steps"] == 2
    [note] = rec["notes"]
    assert note.startswith("Training stopped at step 3: the loss is nan and the gradient of model.") and "NaN/Inf" in note


def test_skip_mode_counts_skipped_steps(tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, {2, 5})
    out = _run_inprocess(_tiny_c4(tmp_path, "method=galore", "train.max_steps=6", "train.eval_every=null",
                                 "train.on_nonfinite=skip"))
    rec = json.loads(out.path.read_text())
    assert (out.status, rec["status"]) == ("complete", "complete")
    assert rec["train"]["nonfinite_skipped_steps"] == 2 and rec["train"]["steps"] == 6
    assert [s for s, v in rec["loss_curve"] if v is None] == [2, 5]


def _svd_failing_for(monkeypatch, dtypes):
    real = torch.linalg.svd
    seen = []

    def svd(A, *args, **kwargs):
        seen.append(A.dtype)
        if A.dtype in dtypes:
            raise torch.linalg.LinAlgError("simulated: the algorithm failed to converge")
        return real(A, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", svd)
    return seen


def test_svd_failure_is_retried_in_float64(monkeypatch):
    from gnlorp.optim.projector import compute_projection

    g = torch.randn(12, 7, generator=torch.Generator().manual_seed(0))
    P_ref, _ = compute_projection(g, 3, "left", name="w")
    seen = _svd_failing_for(monkeypatch, {torch.float32})
    P, Q = compute_projection(g, 3, "left", name="w")
    assert seen == [torch.float32, torch.float64] and Q is None
    assert P.dtype == torch.float32 and P.shape == (12, 3)
    # the same subspace (singular vectors are unique up to sign)
    assert torch.allclose((P.T @ P_ref).abs(), torch.eye(3), atol=1e-5)


def test_svd_failing_in_both_precisions_is_reported(monkeypatch):
    from gnlorp.optim.projector import NonFiniteGradientError, SVDFailedError, compute_projection

    _svd_failing_for(monkeypatch, {torch.float32, torch.float64})
    with pytest.raises(SVDFailedError, match=r"model\.layers\.0\.mlp\.up_proj\.weight \(+12, 7\)+ did not converge in float32 nor float64"):
        compute_projection(torch.randn(12, 7), 3, "right", name="model.layers.0.mlp.up_proj.weight")
    g = torch.randn(12, 7)
    g[1, 2] = float("inf")
    with pytest.raises(NonFiniteGradientError, match="model.x.weight contains NaN or Inf"):
        compute_projection(g, 3, "right", name="model.x.weight")


def test_svd_failure_during_training_fails_the_run_loudly(tmp_path, monkeypatch):
    _svd_failing_for(monkeypatch, {torch.float32, torch.float64})
    lines = []
    from gnlorp.runner import run

    out = run(compose(_tiny_c4(tmp_path, "method=galore", "train.max_steps=4", "train.eval_every=null")), echo=lines.append)
    assert (out.status, out.exit_code) == ("failed", 3)
    rec = json.loads(out.path.read_text())
    assert rec["status"] == "failed" and rec["train"]["steps"] == 0 and rec["loss_curve"] == []
    assert rec["notes"][0].startswith("Training stopped at step 1: The SVD of the gradient of model.layers.")
    assert any(line.startswith("error: Training stopped at step 1") for line in lines)


# ======================================================================================== crash safety
_SLOW_SAVE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from gnlorp import train
    from gnlorp.checkpointer import Checkpointer
    from gnlorp.train import LoopConfig, TrainData, TrainLoop

    train.base_optimizer = lambda opt: opt       # a plain AdamW needs no unwrapping (and this skips importing peft)
    path = Path(sys.argv[1])
    model = nn.Linear(256, 256)
    data = TrainData(4, lambda idx: {}, lambda b: 0)
    loop = TrainLoop(model, torch.optim.AdamW(model.parameters()), data, LoopConfig(total_steps=1, batch_size=2,
                     micro_batch_size=2), evaluate=lambda m: {}, on_log=lambda *a: None, on_eval=lambda *a: None,
                     device=torch.device("cpu"), checkpointer=Checkpointer(path, "slow-save", settings={}))
    with torch.no_grad():
        model.weight.fill_(1.0)
    loop.save_checkpoint()                       # the good, previous checkpoint
    with torch.no_grad():
        model.weight.fill_(2.0)

    real_save = torch.save
    def slow_save(obj, f, *args, **kwargs):      # a large state: many seconds to write
        import io
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        for i in range(0, len(data), 4096):     # f: the checkpoint's temporary file (wrapped)
            f.write(data[i:i + 4096])
            f.flush()
            if i == 4096 * 4:
                print("writing", flush=True)
            time.sleep(0.05)
    torch.save = slow_save
    loop.save_checkpoint()
    print("finished", flush=True)
""")


def test_a_crash_during_a_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "ck" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(ckpt)], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == "writing\n", proc.stderr.read()[-3000:]
        partial = tmp_path / "ck" / f"last.pt.tmp-{proc.pid}"
        assert partial.exists()
        proc.kill()  # SIGKILL: no handler, no cleanup, as in a power cut or OOM kill
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = _load_model(ckpt)
    assert torch.equal(state["weight"], torch.ones(256, 256))
    assert partial.exists() and partial.stat().st_size < ckpt.stat().st_size


def test_load_results_skips_and_names_unreadable_files(tmp_path):
    from gnlorp.record import RunRecord, load_results

    RunRecord(tmp_path, "good", {"seed": 0}).write("complete")
    (tmp_path / "truncated.json").write_text('{"schema_version": 1, "run_name": "trunc')
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "good.json.tmp-12345").write_text("{")  # a write that was killed half-way
    records, problems = load_results(tmp_path)
    assert [r["run_name"] for r in records] == ["good"]
    assert {p.name: why.split(":")[0] for p, why in problems} == {"truncated.json": "invalid JSON",
                                                                 "empty.json": "empty file"}


# ========================================================================================= determinism
@pytest.mark.parametrize("kind", ["glue", "c4"])
def test_same_seed_same_loss_curve_other_seed_other_curve(tmp_path, kind):
    def curve(sub, seed):
        args = (_tiny_glue(tmp_path / sub, "method=gradnormlorp", "rank=4", "train.epochs=1") if kind == "glue"
                else _tiny_c4(tmp_path / sub, "method=galore", "train.max_steps=5", "train.eval_every=null"))
        out = _run_inprocess(args + [f"seed={seed}"])
        assert out.status == "complete"
        return out.record["loss_curve"]

    first, again, other = curve("a", 0), curve("b", 0), curve("c", 1)
    assert len(first) >= 4
    assert first == again
    assert first != other and all(x != y for (_, x), (_, y) in zip(first, other))


# ============================================================================================ W&B faults
def test_unreachable_wandb_server_and_bad_key_do_not_stop_training(tmp_path):
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567",
           "WANDB_BASE_URL": "http://127.0.0.1:9",  # loopback, closed port: refused at once, never leaves the host
           "WANDB_INIT_TIMEOUT": "5", "HOME": str(tmp_path), "WANDB_DIR": str(tmp_path),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_cfg"), "NETRC": str(tmp_path / "no-netrc")}
    p = _cli(_tiny_glue(tmp_path, "method=full", "train.epochs=1", "logger.mode=online"), tmp_path, env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    notices = [line for line in out.splitlines() if line.startswith("W&B")]
    assert len(notices) == 1 and "online init failed" in notices[0] and "logging offline" in notices[0], out[-3000:]
    [rec] = _records(tmp_path / "results")
    assert rec["status"] == "complete"
    assert len(list((tmp_path / "outputs").rglob("offline-run-*"))) == 1  # W&B's folder: with the Hydra outputs
