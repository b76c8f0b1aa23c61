"""Nothing mixed, nothing lost: a resume on other data is refused, skip_complete never keeps a result of other
data, and a failure during or after training ends `failed` without touching an earlier complete result."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from conftest import GLUE_DIR, c4_corpus, compose, run_cli, tiny_c4, tiny_glue, with_overrides

pytestmark = pytest.mark.slow


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _errors(p) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def stopped_c4(tmp_path_factory):
    """A tiny C4 run on a corpus of 4 shards, stopped at step 4: its checkpoint records that corpus."""
    tmp_path = tmp_path_factory.mktemp("stopped_c4")
    corpus = c4_corpus(tmp_path / "c4")
    args = with_overrides(tiny_c4(tmp_path, "train.num_threads=1"), f"task.data_dir={corpus}")
    p = run_cli([*args, "train.stop_at_step=4"], tmp_path)
    assert p.returncode == 0 and "Result (incomplete)" in p.stdout, p.stderr[-2000:]
    (checkpoint,) = (tmp_path / "checkpoints").glob("*/last.pt")
    return tmp_path, corpus, args, checkpoint, _digest(checkpoint)


# "another corpus" first: "a shard removed" changes the recorded corpus itself
@pytest.mark.parametrize("change", ["another corpus", "a shard removed"])
def test_a_resume_on_other_data_is_refused_naming_the_data_dir_and_the_checkpoint_kept(stopped_c4, change):
    tmp_path, corpus, args, checkpoint, before = stopped_c4
    assert _digest(checkpoint) == before
    if change == "another corpus":
        args = with_overrides(args, f"task.data_dir={c4_corpus(tmp_path / 'other', shards=3)}")
        named = "c4-train.00003-of-00004.json.gz missing"
    else:
        (corpus / "c4-train.00001-of-00004.json.gz").unlink()
        named = "c4-train.00001-of-00004.json.gz missing"
    p = run_cli([*args, "resume=true"], tmp_path)
    (line,) = _errors(p)
    assert p.returncode == 2 and "task.data_dir" in line and named in line and "it was kept" in line, p.stderr
    assert "Traceback" not in p.stderr and _digest(checkpoint) == before and p.seconds < 30


def test_skip_complete_reruns_when_one_training_label_changed(tmp_path):
    data = tmp_path / "glue"
    shutil.copytree(GLUE_DIR / "RTE", data / "RTE")
    args = with_overrides(tiny_glue(tmp_path, "train.num_threads=1", "train.epochs=1", "skip_complete=true"),
                          f"task.data_dir={data}")
    p = run_cli(args, tmp_path)
    assert p.returncode == 0 and "Result (complete)" in p.stdout, p.stderr[-2000:]
    p = run_cli(args, tmp_path)
    assert "skipped (skip_complete=true)" in p.stdout
    train = data / "RTE" / "train.tsv"
    lines = train.read_text().splitlines(keepends=True)
    row = 1 + next(i for i, line in enumerate(lines[1:]) if line.rstrip("\n").endswith("\tentailment"))
    lines[row] = lines[row].replace("\tentailment\n", "\tnot_entailment\n")
    train.write_text("".join(lines))
    p = run_cli(args, tmp_path)
    assert p.returncode == 0 and "skipped" not in p.stdout and "Result (complete)" in p.stdout, p.stderr[-2000:]
    records = [json.loads(f.read_text()) for f in sorted((tmp_path / "results").glob("*.json"))]
    assert len(records) == 2 and records[0]["identity"]["data"] != records[1]["identity"]["data"]


def test_a_damaged_validation_cache_fails_the_run_in_one_line_and_keeps_the_complete_result(tmp_path):
    args = tiny_c4(tmp_path, "train.num_threads=1")
    p = run_cli(args, tmp_path)
    assert p.returncode == 0 and "Result (complete)" in p.stdout, p.stderr[-2000:]
    (result,) = (tmp_path / "results").glob("*.json")
    kept = result.read_bytes()
    (cache,) = (tmp_path / "cache" / "c4-eval").glob("*.pt")
    raw = bytearray(cache.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0x5A for b in raw[mid:mid + 64])
    cache.write_bytes(bytes(raw))
    p = run_cli(args, tmp_path)
    (line,) = _errors(p)
    assert p.returncode != 0 and str(cache) in line and "damaged" in line and "Traceback" not in p.stderr, p.stderr
    assert result.read_bytes() == kept
    failed = json.loads(result.with_name(result.name + ".failed").read_text())
    assert failed["status"] == "failed" and any("damaged" in note for note in failed["notes"])


def test_a_crash_after_training_is_failed_not_complete(tmp_path, monkeypatch):
    from gnlorp import outcome, runner

    args = tiny_glue(tmp_path, "train.num_threads=1", "train.epochs=1", "save_model=true")
    done = runner.run(compose(args), echo=lambda *_: None)
    assert done.status == "complete"
    kept = done.path.read_bytes()

    def broken_merge(*_):
        raise IndexError("index 70000 is out of range")

    monkeypatch.setattr(outcome, "_save_merged_model", broken_merge)
    said = []
    out = runner.run(compose(args), echo=said.append)
    assert (out.status, out.exit_code) == ("failed", 1) and out.path == done.path.with_name(done.path.name + ".failed")
    (line,) = [s for s in said if s.startswith("error: ")]
    assert line.startswith(f"error: the run failed at step {out.record['train']['steps']} of "
                           f"{out.record['train']['total_steps']}: IndexError: index 70000 is out of range")
    assert done.path.read_bytes() == kept and json.loads(out.path.read_text())["status"] == "failed"
