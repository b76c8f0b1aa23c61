"""A result is identified by every setting that changes training: a sweep over any of them gives one result per
point, skip_complete skips only an identical config, and resume=true never continues another config's state."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import compose, needs_shared, run_cli, tiny_glue, with_overrides

pytestmark = [needs_shared, pytest.mark.slow]


def _glue(tmp, *extra):
    return with_overrides(tiny_glue(tmp, "train.num_threads=1", "method=galore", "train.epochs=1"), *extra)


def _results(tmp) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((tmp / "results").glob("*.json"))}


def test_an_lr_sweep_resumes_only_its_own_point_and_skips_only_identical_configs(tmp_path):
    """One point stopped at step 2; a sweep with resume=true resumes it and runs the other point (its checkpoint is no
    reason to stop): one complete result per point; a rerun over three rates with skip_complete=true skips exactly the
    two identical configs (results untouched) and runs the third."""
    p = run_cli(_glue(tmp_path, "train.stop_at_step=2", "train.lr=1e-4"), tmp_path)
    assert p.returncode == 0 and "Result (incomplete)" in p.stdout, p.stderr[-2000:]
    sweep = ["-m", *_glue(tmp_path, f"hydra.sweep.dir={tmp_path}/multirun")]
    p = run_cli([*sweep, "resume=true", "train.lr=1e-4,3e-3"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("Result (complete)") == 2 and p.stdout.count("Resumed from") == 1 and "at step 2" in p.stdout
    first = _results(tmp_path)
    assert sorted(r["config"]["derived"]["lr"] for r in first.values()) == [1e-4, 3e-3]
    assert all(r["status"] == "complete" for r in first.values()) and len(first) == 2
    assert all(r["identity"]["settings"]["train.lr"] == r["config"]["derived"]["lr"] for r in first.values())

    p = run_cli([*sweep, "skip_complete=true", "train.lr=1e-4,3e-3,1e-3"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("skipped (skip_complete=true)") == 2 and p.stdout.count("Result (complete)") == 1
    after = _results(tmp_path)
    assert {k: v["finished_at"] for k, v in after.items() if k in first} == {k: v["finished_at"] for k, v in first.items()}
    assert sorted(r["config"]["derived"]["lr"] for r in after.values()) == [1e-4, 1e-3, 3e-3]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """One run stopped at step 2, its checkpoint kept: every refused resume below must leave it as it is."""
    tmp = tmp_path_factory.mktemp("stopped")
    p = run_cli(_glue(tmp, "train.stop_at_step=2"), tmp)
    assert p.returncode == 0 and "Result (incomplete)" in p.stdout, p.stderr[-2000:]
    (checkpoint,) = (tmp / "checkpoints").glob("*/last.pt")
    return tmp, checkpoint, _digest(checkpoint)


@pytest.mark.parametrize("change, named", [
    (["train.lr=1e-3"], "train.lr"),
    (["rank=4"], "rank"),
    (["method=gradnormlorp"], "method.name"),
    (["train.batch_size=8"], "train.batch_size"),
    (["train.eval_every=1"], "train.eval_every"),  # GLUE reports the best evaluation: the cadence changes it
])
def test_resume_into_another_config_is_refused_and_the_checkpoint_kept(stopped, change, named):
    tmp_path, checkpoint, before = stopped
    assert _digest(checkpoint) == before
    p = run_cli(_glue(tmp_path, "resume=true", *change), tmp_path)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode == 2 and len(errors) == 1 and named in errors[0] and "it was kept" in errors[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and _digest(checkpoint) == before


def test_resume_after_a_change_of_logging_cadence_continues_with_the_whole_curves(tmp_path):
    from gnlorp.runner import run  # in-process: the CLI's part (exit codes, one-line errors) is checked above

    part = run(compose(_glue(tmp_path, "train.stop_at_step=2", "train.eval_every=1")), echo=lambda *_: None)
    assert part.status == "incomplete" and part.record["train"]["steps"] == 2
    lines = []
    resumed = run(compose(_glue(tmp_path, "resume=true", "train.eval_every=1", "train.log_every=2")), echo=lines.append)
    said = "\n".join(lines)
    assert resumed.status == "complete" and "Resumed from" in said and "at step 2" in said, said[-2000:]
    (rec,) = _results(tmp_path).values()
    assert rec["status"] == "complete"
    steps = rec["train"]["total_steps"]
    assert [s for s, _ in rec["loss_curve"]] == list(range(1, steps + 1))
    assert [s for s, _ in rec["lr_curve"]] == list(range(1, steps + 1))  # not from the resumed step on
    assert [e["step"] for e in rec["eval_history"]] == list(range(1, steps + 1))  # before and after the resume
