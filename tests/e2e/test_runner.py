"""End-to-end runs of the runner on tiny models and real shared data."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, compose, needs_shared, tiny_c4, tiny_glue
from gnlorp.runner import run

pytestmark = [needs_shared, pytest.mark.slow]


def _quiet(*_):
    pass


def test_glue_run_records_metrics_memory_and_throughput(tmp_path):
    out = run(compose(tiny_glue(tmp_path, "method=gradnormlorp", "rank=4")), echo=_quiet)
    rec = json.loads(out.path.read_text())
    assert rec["status"] == "complete"
    assert set(rec["eval"]["validation"]) == {"accuracy"}
    assert [e["epoch"] for e in rec["eval_history"]] == [1, 2]
    assert rec["best"]["metrics"]["validation"]["accuracy"] >= rec["last"]["metrics"]["validation"]["accuracy"]
    assert rec["train"]["steps"] == 8 and rec["train"]["tokens"] > 0 and rec["train"]["tokens_per_second"] > 0
    mem = rec["memory"]
    assert mem["kind"] == "cpu_rss" and mem["peak_rss_bytes"] > 0
    assert mem["optimizer_state_bytes"] == mem["optimizer_state_bytes_analytic"] > 0
    assert rec["config"]["rank"] == 4 and rec["config"]["derived"]["lr"] == 3e-4
    assert out.path.name == f"glue-rte-bert_tiny-gradnormlorp-r4-fp32-n64-s0-{rec['identity']['hash']}.json"
    assert len(rec["loss_curve"]) == 8


def test_c4_run_reports_perplexity(tmp_path):
    cfg = compose(tiny_c4(tmp_path, "method=gradnormlorp"))
    cfg.keep_checkpoint = False
    lines = []
    out = run(cfg, echo=lines.append)
    # a line every total_steps // 10 steps (here every step), not after the last one
    steps = [line.split(":")[0] for line in lines if line.startswith("step ")]
    assert steps == [f"step {i}/12" for i in range(1, 12)], lines
    assert all("tokens/s, training ETA" in line for line in lines if line.startswith("step "))
    assert not (tmp_path / "checkpoints" / out.path.stem / "last.pt").exists(), "a complete run drops its checkpoint"
    rec = out.record
    assert rec["status"] == "complete"
    history = [e["metrics"]["validation"]["perplexity"] for e in rec["eval_history"]]
    assert [e["step"] for e in rec["eval_history"]] == [6, 12]
    assert history[-1] < 32000, "a model that learned nothing would sit near the vocabulary size"
    v = rec["eval"]["validation"]
    assert abs(v["perplexity"] - torch.tensor(v["loss"]).exp().item()) < 1e-3 * v["perplexity"]
    assert rec["train"]["tokens"] == 12 * 4 * 64


# Stop at step 5 of 10, resume, and compare with an uninterrupted run, for the methods whose state changes shape or
# resets during a run (ReLoRA merges and restarts its lr after steps 4 and 8; SwitchLoRA swaps vectors every step).
# GaLore and GradNormLoRP (projection refresh every 4 steps) get the same check from a signal-stopped run, through
# the CLI and in-process: test_failures.py::test_signal_checkpoints_and_resume_matches_an_uninterrupted_run; full
# and LoRA through stop_at_step: test_failures.py::test_stop_at_step_then_resume_matches_an_uninterrupted_run.
STEPS = 10
RESUMED_METHODS = {
    "relora": ("method=relora", "train.lr=1e-3", "method.relora_reset_every=4", "method.relora_restart_warmup=2"),
    "switchlora": ("method=switchlora", "train.lr=1e-2", "method.switch_lora_interval=8", "method.adam_warm_step=2"),
}


@pytest.mark.parametrize("method", list(RESUMED_METHODS))
def test_resume_reaches_the_same_parameters(tmp_path, method):
    common = (*RESUMED_METHODS[method], f"train.max_steps={STEPS}", "train.eval_every=5")
    straight = run(compose(tiny_c4(tmp_path / "a", *common)), echo=_quiet)
    part = run(compose(tiny_c4(tmp_path / "b", *common, "train.stop_at_step=5")), echo=_quiet)
    resumed = run(compose(tiny_c4(tmp_path / "b", *common, "resume=true")), echo=_quiet)
    assert straight.status == resumed.status == "complete" and part.status == "incomplete"
    assert part.record["train"]["steps"] == 5 and resumed.record["notes"][0].endswith("at step 5")
    name = straight.path.stem
    a, b = (torch.load(tmp_path / d / "checkpoints" / name / "last.pt", weights_only=True)["model"] for d in "ab")
    assert a.keys() == b.keys()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    assert straight.record["loss_curve"] == resumed.record["loss_curve"]
    assert [s for s, _ in straight.record["loss_curve"]] == list(range(1, STEPS + 1))
    mem = straight.record["memory"]
    assert mem["optimizer_state_bytes"] == mem["optimizer_state_bytes_analytic"] > 0
    assert straight.record["eval"]["validation"]["perplexity"] < 32000
    if method == "relora":
        assert {int(v) for k, v in a.items() if k.endswith("resets")} == {2}, "merged after steps 4 and 8"
        lr = dict(straight.record["lr_curve"])  # the lr step s used
        warm = int(0.1 * STEPS)  # 1 warm-up step, then the cosine over the other 9
        cosine = lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (STEPS - warm)))  # noqa: E731
        assert lr[4] == pytest.approx(1e-3 * cosine(3))
        assert lr[5] == pytest.approx(1e-3 * cosine(6) / 2), "the first step after the reset re-warms up"
        assert lr[6] == pytest.approx(1e-3 * cosine(6))
        assert lr[9] == pytest.approx(1e-3 * cosine(10) / 2), "and after the second"
    else:
        assert sum(int(v[0]) for k, v in a.items() if k.endswith("switched")) > 0, "the run swapped vectors"


def _cli(args, tmp_path, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_multirun_over_methods_writes_four_complete_results(tmp_path):
    p = _cli(["-m", "method=full,lora,galore,gradnormlorp", "rank=4", *tiny_glue(tmp_path, "train.epochs=1")], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    files = sorted((tmp_path / "results").glob("*.json"))
    assert [f.stem.rsplit("-", 1)[0] for f in files] == [  # <readable name>-<hash of the training settings>
        "glue-rte-bert_tiny-full-fp32-n64-s0", "glue-rte-bert_tiny-galore-r4-fp32-n64-s0",
        "glue-rte-bert_tiny-gradnormlorp-r4-fp32-n64-s0", "glue-rte-bert_tiny-lora-r4-fp32-n64-s0",
    ]
    assert all(json.loads(f.read_text())["status"] == "complete" for f in files)
    logs = sorted((tmp_path / "multirun").rglob("run.log"))  # each Hydra job's log holds its run
    assert len(logs) == 4 and all("Result (complete)" in log.read_text() for log in logs)
    # and its loss curve, the progress bar on (tiny_glue turns it off: here it is the default)
    p = _cli(["-m", "method=lora", "rank=4", *tiny_glue(tmp_path, "train.epochs=1", "train.progress=true",
                                                         f"hydra.sweep.dir={tmp_path}/bar")], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    (log,) = (tmp_path / "bar").rglob("run.log")
    assert sum(": loss " in line and "training ETA" in line for line in log.read_text().splitlines()) >= 3


def test_wandb_offline_run_holds_the_record_grouped_and_tagged(tmp_path):
    """The W&B folder sits with the job's Hydra outputs; the summary holds the record's headline figures, the
    group, tags and job_type are set, and a rerun of the same config is a new W&B run in the same group."""
    args = tiny_glue(tmp_path, "method=galore", "rank=4", "train.epochs=1", "logger.mode=offline")
    p = _cli(args, tmp_path, {"WANDB_MODE": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    (run,) = list((tmp_path / "outputs").rglob("offline-run-*"))
    rec = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    # an offline run keeps its summary in the run's .wandb log (protobuf: key, then the value as JSON); integers
    # are compared by value, the rest by key
    blob = b"".join(f.read_bytes() for f in run.glob("*.wandb"))
    exact = {"memory/peak_rss_bytes": rec["memory"]["peak_rss_bytes"],
             "memory/optimizer_state_bytes": rec["memory"]["optimizer_state_bytes"],
             "memory/optimizer_state_bytes_analytic": rec["memory"]["optimizer_state_bytes_analytic"],
             "parameters/trainable": rec["memory"]["parameters"]["trainable"],
             "parameters/total": rec["memory"]["parameters"]["total"], "train/tokens": rec["train"]["tokens"]}
    for key, value in exact.items():
        at = blob.rfind(key.encode())
        assert at >= 0 and str(value).encode() in blob[at:at + len(key) + 40], key
    for key in ("best/validation/accuracy", "final/validation/accuracy", "train/wall_seconds",
                "train/tokens_per_second", "train/eval_seconds", "train/total_seconds", "memory/checkpoint_bytes",
                "status"):
        assert key.encode() in blob, key
    # the record's timings: all of the run (loading and evaluation too) > training > 0, evaluations > 0
    train = rec["train"]
    assert train["total_seconds"] > train["wall_seconds"] > 0 and train["total_seconds"] > train["eval_seconds"] > 0
    ckpt = next((tmp_path / "checkpoints").rglob("last.pt"))  # keep_checkpoint=true in tiny_glue
    assert rec["memory"]["checkpoint_bytes"] == ckpt.stat().st_size
    assert b"eval/validation/accuracy" in blob and b"train/loss" in blob
    assert b"rte-bert_tiny" in blob  # the group: <task>-<model> outside a sweep or an experiment
    assert all(tag in blob for tag in (b"method:galore", b"task:rte", b"model:bert_tiny", b"rank:4", b"precision:fp32"))
    assert b"finetune" in blob  # job_type
    p = _cli(args, tmp_path, {"WANDB_MODE": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    runs = sorted((tmp_path / "outputs").rglob("offline-run-*"))
    ids = {r.name.split("-run-", 1)[1].split("-", 1)[1] for r in runs}
    assert len(runs) == 2 and len(ids) == 2, ids  # the rerun is a new W&B run (W&B would drop its steps 1..N)...
    assert all(b"rte-bert_tiny" in b"".join(f.read_bytes() for f in r.glob("*.wandb")) for r in runs)  # one group


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    args = tiny_glue(tmp_path, "method=lora", "rank=4", "train.epochs=1", "logger.mode=offline")
    first = _cli([*args, "train.stop_at_step=2"], tmp_path, {"WANDB_MODE": ""})
    assert json.loads(next((tmp_path / "results").glob("*.json")).read_text())["status"] == "incomplete", first.stderr[-2000:]
    second = _cli([*args, "resume=true"], tmp_path, {"WANDB_MODE": ""})
    assert second.returncode == 0, second.stderr[-2000:]
    runs = sorted((tmp_path / "outputs").rglob("offline-run-*"))
    ids = {r.name.split("-run-", 1)[1].split("-", 1)[1] for r in runs}
    assert len(runs) == 2 and len(ids) == 1, ids


def test_no_key_and_no_mode_goes_offline_with_one_notice(tmp_path):
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
           "NETRC": str(tmp_path / "no-netrc")}
    p = _cli(tiny_glue(tmp_path, "method=full", "train.epochs=1", "logger.mode=null"), tmp_path, env)
    assert p.returncode == 0, p.stderr[-2000:]
    notices = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("W&B")]
    assert len(notices) == 1 and "offline" in notices[0]
    assert json.loads(next((tmp_path / "results").glob("*.json")).read_text())["status"] == "complete"
