"""gnlorp.record (results/<run>.json) and gnlorp.wandb_log (the W&B mirror)."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gnlorp import record as rec
from gnlorp.errors import UserError
from gnlorp.record import (
    SCHEMA_VERSION,
    RunRecord,
    atomic_write_bytes,
    atomic_write_json,
    load_results,
    thin_curve,
)

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """Deterministic UTC clock: each call is one second later."""

    def __init__(self, start=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)):
        self.now = start

    def __call__(self):
        self.now += timedelta(seconds=1)
        return self.now


def filled_record(results_dir, run_name="sst2_lora_r8", clock=None):
    r = RunRecord(results_dir, run_name, {"task": "sst2", "method": {"name": "lora", "rank": 8},
                                         "lr": 3e-4, "seeds": (1, 2)}, clock=clock or FakeClock())
    for step in range(1, 31):
        r.add_loss(step, 1.0 / step, lr=1e-4 * step)
    r.add_eval(10, {"validation": {"accuracy": 0.80, "f1": 0.79}}, epoch=0)
    r.add_eval(20, {"validation": {"accuracy": 0.85, "f1": 0.84}}, epoch=1)
    r.add_eval(30, {"validation": {"accuracy": 0.83, "f1": 0.82}}, epoch=2)
    r.set_best_last(
        best={"step": 20, "epoch": 1, "metrics": {"validation": {"accuracy": 0.85}}},
        last={"step": 30, "epoch": 2, "metrics": {"validation": {"accuracy": 0.83}}},
    )
    r.set_train(steps=30, tokens=30 * 512, wall_seconds=12.5, tokens_per_second=1228.8)
    r.set_memory(kind="cpu_rss", peak_rss_bytes=123456789, optimizer_state_bytes=4096)
    return r


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------


def test_atomic_write_json_round_trips(tmp_path):
    obj = {"b": [1, 2.5, "x", None, True], "a": {"nested": {"z": 1, "y": [{"k": "v"}]}}}
    path = tmp_path / "sub" / "r.json"  # parent directories are created
    atomic_write_json(path, obj)
    assert json.loads(path.read_text()) == obj
    text = path.read_text()
    assert text.endswith("\n")
    assert text.startswith('{\n  "a"')  # indent 2, sorted keys
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no tmp file left behind


def test_atomic_write_bytes_replaces_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new" * 1000)
    assert path.read_bytes() == b"new" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_nan_and_inf_become_null(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"loss": float("nan"), "ppl": float("inf"), "neg": -math.inf,
                             "ok": 1.5, "list": [float("nan"), 2.0], "tuple": (float("inf"),)})
    assert json.loads(path.read_text()) == {"loss": None, "ppl": None, "neg": None, "ok": 1.5,
                                            "list": [None, 2.0], "tuple": [None]}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_numpy_torch_and_odd_values_are_written(tmp_path):
    np = pytest.importorskip("numpy")
    import torch

    path = tmp_path / "m.json"
    atomic_write_json(path, {
        "np32": np.float32(0.5), "npnan": np.float64("nan"), "npint": np.int64(7),
        "t": torch.tensor(0.25), "tnan": torch.tensor(float("nan")), "vec": np.arange(3),
        "path": Path("/x/y"), 3: "int key", "set": {2, 1},
    })
    assert json.loads(path.read_text()) == {
        "np32": 0.5, "npnan": None, "npint": 7, "t": 0.25, "tnan": None, "vec": [0, 1, 2],
        "path": "/x/y", "3": "int key", "set": [1, 2],
    }


def test_omegaconf_config_is_written_as_plain_json(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"optim": {"lr": 1e-3, "betas": [0.9, 0.999]}, "seed": 1})
    r = RunRecord(tmp_path, "omega", cfg)
    r.write("incomplete")
    assert json.loads(r.path.read_text())["config"] == {"optim": {"lr": 1e-3, "betas": [0.9, 0.999]},
                                                        "seed": 1}


def test_failed_write_keeps_old_file_and_removes_tmp(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"v": 1})

    def broken_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rec.os, "fsync", broken_fsync)
    with pytest.raises(UserError) as info:
        atomic_write_json(path, {"v": 2})
    monkeypatch.undo()
    assert str(info.value) == (f"could not write {path}: no space left on device; free disk space or set "
                               "results_dir to a disk with room.")
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize("where", ["results dir is a file", "read-only"])
def test_unwritable_results_folder_is_one_line(tmp_path, monkeypatch, where):
    if where == "results dir is a file":
        (tmp_path / "results").write_text("")
        path = tmp_path / "results" / "r.json"
    else:  # as root a chmod would not stop the write: the file system's refusal is simulated
        path = tmp_path / "r.json"

        def read_only(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(rec.os, "open", read_only)
    with pytest.raises(UserError) as info:
        atomic_write_json(path, {"v": 1})
    msg = str(info.value)
    assert msg.startswith(f"could not write {path}: ") and "\n" not in msg
    assert ("file exists" in msg or "not a directory" in msg) if where != "read-only" else "read-only file system" in msg
    monkeypatch.undo()
    assert not list(tmp_path.rglob("*.tmp-*"))


_SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from gnlorp import record

    real_write = os.write

    def slow_write(fd, data):  # at most 64 KiB per call, then a pause: a long, interruptible write
        n = real_write(fd, bytes(data[:65536]))
        time.sleep(0.05)
        return n

    record.os.write = slow_write
    big = {"schema": "new", "rows": [{"i": i, "text": "x" * 100} for i in range(60000)]}
    record.atomic_write_json(sys.argv[2], big)
    print("FINISHED", flush=True)
""")


def test_sigkill_mid_write_leaves_previous_file_intact(tmp_path):
    results = tmp_path / "results"
    old = filled_record(results, run_name="victim")
    old.write("incomplete")
    path = old.path
    old_bytes = path.read_bytes()
    old_obj = json.loads(old_bytes)

    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(REPO), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp_file = path.with_name(f"{path.name}.tmp-{proc.pid}")
    deadline = time.monotonic() + 30
    try:
        # Wait until the writer is part-way through the temporary file.
        while not (tmp_file.exists() and tmp_file.stat().st_size >= 3 * 65536):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "writer never started"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert b"FINISHED" not in out

    # The destination was never touched: same bytes, still parses to the old record.
    assert path.read_bytes() == old_bytes
    assert json.loads(path.read_text()) == old_obj
    # The partial write exists only as the temporary file, which is truncated JSON...
    assert tmp_file.exists()
    with pytest.raises(json.JSONDecodeError):
        json.loads(tmp_file.read_text())
    # ...and load_results neither loads nor complains about it.
    records, problems = load_results(results)
    assert problems == []
    assert [r["run_name"] for r in records] == ["victim"]
    assert records[0] == old_obj


# ---------------------------------------------------------------------------------------------
# RunRecord
# ---------------------------------------------------------------------------------------------


def test_run_record_contents(tmp_path):
    r = filled_record(tmp_path / "results")
    assert not (tmp_path / "results").exists()  # nothing on disk before write()
    assert r.path == tmp_path / "results" / "sst2_lora_r8.json"
    r.add_note("used MiniLM-L6 instead of roberta-base (offline)")
    assert r.write("complete") == r.path
    data = json.loads(r.path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["run_name"] == "sst2_lora_r8"
    assert data["status"] == "complete"
    assert data["config"] == {"task": "sst2", "method": {"name": "lora", "rank": 8},
                              "lr": 3e-4, "seeds": [1, 2]}
    assert set(data["git"]) == {"sha", "dirty"}
    assert data["versions"]["torch"] is not None
    assert data["device"]["type"] in ("cpu", "cuda")
    assert data["started_at"] == "2025-01-02T03:04:06Z"
    assert data["finished_at"] == "2025-01-02T03:04:07Z"
    assert data["eval"] == {"validation": {"accuracy": 0.83, "f1": 0.82}}
    assert [(h["step"], h["epoch"]) for h in data["eval_history"]] == [(10, 0), (20, 1), (30, 2)]
    assert data["eval_history"][1]["metrics"]["validation"]["accuracy"] == 0.85
    assert data["best"]["step"] == 20 and data["best"]["epoch"] == 1
    assert data["last"]["step"] == 30
    assert data["train"] == {"steps": 30, "tokens": 15360, "wall_seconds": 12.5,
                             "tokens_per_second": 1228.8}
    assert data["memory"]["optimizer_state_bytes"] == 4096
    assert data["loss_curve"][0] == [1, 1.0] and data["loss_curve"][-1] == [30, 1.0 / 30]
    assert len(data["loss_curve"]) == 30
    assert data["lr_curve"][-1] == [30, pytest.approx(3e-3)]
    assert data["notes"] == ["used MiniLM-L6 instead of roberta-base (offline)"]
    records, problems = load_results(tmp_path / "results")
    assert problems == [] and records == [data]


def test_write_many_times_incomplete_then_complete(tmp_path):
    clock = FakeClock()
    r = RunRecord(tmp_path, "run", {"a": 1}, clock=clock)
    r.add_loss(1, 2.0)
    r.write("incomplete")
    first = json.loads(r.path.read_text())
    assert first["status"] == "incomplete" and first["finished_at"] is None
    assert "notes" not in first and "lr_curve" not in first
    r.add_loss(2, 1.5)
    r.set_eval({"validation": {"accuracy": float("nan")}})
    r.write("complete")
    second = json.loads(r.path.read_text())
    assert second["status"] == "complete" and second["finished_at"] is not None
    assert second["loss_curve"] == [[1, 2.0], [2, 1.5]]
    assert second["eval"] == {"validation": {"accuracy": None}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    with pytest.raises(ValueError):
        r.write("done")


def test_a_complete_result_is_never_replaced_by_one_that_is_not(tmp_path):
    """A rerun of a complete config that fails (or stops) writes beside it, where no table reads; a rerun that
    completes replaces it and clears what failed runs left."""
    done = RunRecord(tmp_path, "run", {"a": 1}, clock=FakeClock())
    done.set_eval({"validation": {"accuracy": 0.9}})
    assert done.write("complete") == tmp_path / "run.json"
    kept = (tmp_path / "run.json").read_bytes()
    for status in ("failed", "incomplete"):
        rerun = RunRecord(tmp_path, "run", {"a": 1}, clock=FakeClock())
        assert rerun.write(status) == tmp_path / f"run.json.{status}" == rerun.written_to
        assert json.loads((tmp_path / f"run.json.{status}").read_text())["status"] == status
        assert (tmp_path / "run.json").read_bytes() == kept
    assert load_results(tmp_path) == ([json.loads(kept)], [])
    again = RunRecord(tmp_path, "run", {"a": 2}, clock=FakeClock())
    assert again.write("complete") == tmp_path / "run.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert json.loads((tmp_path / "run.json").read_text())["config"] == {"a": 2}


def test_flat_eval_metrics_go_to_validation(tmp_path):
    r = RunRecord(tmp_path, "run", {})
    r.add_eval(5, {"perplexity": 31.5})
    assert r.eval == {"validation": {"perplexity": 31.5}}
    assert r.eval_history == [{"step": 5, "epoch": None,
                               "metrics": {"validation": {"perplexity": 31.5}}}]


def test_record_copies_its_inputs(tmp_path):
    config = {"opt": {"lr": 1.0}}
    metrics = {"validation": {"accuracy": 0.5}}
    r = RunRecord(tmp_path, "run", config)
    r.set_eval(metrics)
    config["opt"]["lr"] = 2.0
    metrics["validation"]["accuracy"] = 0.9
    assert r.config == {"opt": {"lr": 1.0}}
    assert r.eval == {"validation": {"accuracy": 0.5}}


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "a\\b"])
def test_bad_run_names_are_user_errors(tmp_path, bad):
    with pytest.raises(UserError):
        RunRecord(tmp_path, bad, {})


def test_output_is_deterministic(tmp_path):
    a = filled_record(tmp_path / "a", clock=FakeClock())
    b = filled_record(tmp_path / "b", clock=FakeClock())
    a.write("complete")
    b.write("complete")
    assert a.path.read_bytes() == b.path.read_bytes()
    # Writing the same record again gives the same bytes when the clock does not move.
    fixed = datetime(2030, 1, 1, tzinfo=timezone.utc)
    a._clock = lambda: fixed
    a.write("complete")
    first = a.path.read_bytes()
    a.write("complete")
    assert a.path.read_bytes() == first

    def keys_in_order(pairs):
        keys = [k for k, _ in pairs]
        assert keys == sorted(keys)
        return dict(pairs)

    json.loads(first, object_pairs_hook=keys_in_order)


# ---------------------------------------------------------------------------------------------
# loss curve thinning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 1999, 2000, 2001, 2002, 3999, 4001, 10_007, 123_457])
def test_thin_curve_bounds(n):
    points = [[i, float(i)] for i in range(n)]
    out = thin_curve(points, 2000)
    assert len(out) <= 2000
    if n <= 2000:
        assert out == points
    else:
        assert out[0] == points[0] and out[-1] == points[-1]
        steps = [p[0] for p in out]
        assert steps == sorted(set(steps))
        gaps = {b - a for a, b in zip(steps[:-2], steps[1:-1])}
        assert len(gaps) == 1  # evenly spaced apart from the appended last point
        assert len(out) > 1000  # not thinned more than needed


def test_run_record_loss_curve_is_bounded_and_keeps_ends(tmp_path):
    r = RunRecord(tmp_path, "long", {})
    n = 25_001
    for step in range(n):
        r.add_loss(step, 10.0 - step * 1e-4, lr=1e-3)
    assert len(r._loss.points) <= 2 * rec.MAX_CURVE_POINTS + 1  # memory stays bounded too
    r.write("complete")
    data = json.loads(r.path.read_text())
    curve = data["loss_curve"]
    assert 1000 < len(curve) <= 2000
    assert curve[0] == [0, 10.0]
    assert curve[-1] == [n - 1, pytest.approx(10.0 - (n - 1) * 1e-4)]
    steps = [p[0] for p in curve]
    assert steps == sorted(set(steps))
    assert len(data["lr_curve"]) <= 2000 and data["lr_curve"][-1][0] == n - 1
    assert r.path.stat().st_size < 200_000


# ---------------------------------------------------------------------------------------------
# load_results
# ---------------------------------------------------------------------------------------------


def test_load_results_reports_bad_files(tmp_path):
    good = filled_record(tmp_path, run_name="good")
    good.write("complete")
    full = good.path.read_text()
    (tmp_path / "truncated.json").write_text(full[: len(full) // 2])
    (tmp_path / "garbage.json").write_bytes(b"\x00\xffnot json at all")
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "future.json").write_text(json.dumps({**json.loads(full), "schema_version": 99}))
    missing = json.loads(full)
    del missing["config"], missing["loss_curve"]
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    (tmp_path / "badstatus.json").write_text(json.dumps({**json.loads(full), "status": "meh"}))
    (tmp_path / "badtype.json").write_text(json.dumps({**json.loads(full), "eval": [1]}))
    (tmp_path / "notes.txt").write_text("not a results file")
    (tmp_path / "good.json.tmp-123").write_text("{")

    records, problems = load_results(tmp_path)
    assert [r["run_name"] for r in records] == ["good"]
    reasons = {path.name: reason for path, reason in problems}
    assert all(isinstance(path, Path) and path.parent == tmp_path for path, _ in problems)
    assert set(reasons) == {"truncated.json", "garbage.json", "empty.json", "list.json",
                            "future.json", "missing.json", "badstatus.json", "badtype.json"}
    assert reasons["truncated.json"].startswith("invalid JSON")
    assert "unreadable" in reasons["garbage.json"] or "invalid JSON" in reasons["garbage.json"]
    assert reasons["empty.json"] == "empty file"
    assert "not a JSON object" in reasons["list.json"]
    assert "schema_version 99" in reasons["future.json"]
    assert reasons["missing.json"] == "missing keys: config, loss_curve"
    assert "status 'meh'" in reasons["badstatus.json"]
    assert "'eval'" in reasons["badtype.json"]


def test_load_results_missing_dir(tmp_path):
    assert load_results(tmp_path / "nope") == ([], [])


# ---------------------------------------------------------------------------------------------
# WandbLogger
# ---------------------------------------------------------------------------------------------

_WANDB_ENV = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL",
              "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_NAME",
              "WANDB_NOTES", "WANDB_TAGS", "WANDB_SWEEP_ID", "WANDB_DISABLED")


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """wandb with no credentials and every file it writes under tmp_path."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "home"
    home.mkdir()
    for name in _WANDB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for var, sub in [("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_ARTIFACT_DIR", "artifacts")]:
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # forget global settings read under another environment
    yield wandb
    wandb.teardown()


def _offline_runs(dir_):
    return sorted((Path(dir_) / "wandb").glob("offline-run-*"))


def _wait_for_records(run_dir, needle, timeout=10.0):
    """The bytes of the run's .wandb transaction log once ``needle`` is in it.

    wandb-core writes the log from its own process and may still be flushing when
    ``run.finish()`` returns (it is complete by the time the service shuts down), so poll.
    """
    deadline = time.monotonic() + timeout
    while True:
        data = b"".join(p.read_bytes() for p in Path(run_dir).glob("*.wandb"))
        if needle in data or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def test_wandb_disabled_writes_nothing(wandb_env, tmp_path, monkeypatch):
    from gnlorp.wandb_log import WandbLogger

    calls = []
    monkeypatch.setattr(wandb_env, "init", lambda *a, **k: calls.append(k))
    lines = []
    out = tmp_path / "out"
    out.mkdir()
    logger = WandbLogger("disabled", "proj", "run", {"a": 1}, str(out), echo=lines.append)
    logger.log({"loss": 1.0}, step=1)
    logger.summary({"acc": 0.5})
    logger.finish()
    assert calls == [] and lines == []
    assert logger.mode == "disabled" and logger.run_id is None
    assert list(out.iterdir()) == []


def test_wandb_mode_none_follows_wandb_mode_env(wandb_env, tmp_path, monkeypatch):
    from gnlorp.wandb_log import WandbLogger

    monkeypatch.setattr(wandb_env, "init", lambda *a, **k: pytest.fail("wandb.init called"))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # what `make test` sets
    lines = []
    logger = WandbLogger(None, "proj", "run", {}, str(tmp_path / "out"), echo=lines.append)
    assert logger.mode == "disabled" and lines == []
    assert not (tmp_path / "out").exists()


def test_wandb_bad_mode_is_a_user_error(tmp_path):
    from gnlorp.wandb_log import WandbLogger

    with pytest.raises(UserError):
        WandbLogger("sometimes", "proj", "run", {}, str(tmp_path))


def test_wandb_offline_writes_run_with_metrics(wandb_env, tmp_path, capfd):
    from gnlorp.wandb_log import WandbLogger

    lines = []
    out = tmp_path / "out"
    t0 = time.monotonic()
    logger = WandbLogger("offline", "proj", "sst2_lora", {"lr": 1e-3, "nested": {"nan": math.nan}},
                         str(out), echo=lines.append)
    init_s = time.monotonic() - t0
    assert logger.mode == "offline", lines
    assert lines == []
    assert logger.run_id
    for step in range(1, 4):
        logger.log({"train/loss_metric_xyz": 1.0 / step}, step=step)
    logger.summary({"final_accuracy_abc": 0.91})
    logger.finish()
    logger.finish()  # idempotent
    assert logger.mode == "offline"
    runs = _offline_runs(out)
    assert len(runs) == 1 and runs[0].name.endswith(logger.run_id)
    data = _wait_for_records(runs[0], b"final_accuracy_abc")
    assert b"train/loss_metric_xyz" in data
    assert b"final_accuracy_abc" in data
    assert b"sst2_lora" in data
    captured = capfd.readouterr()
    assert "wandb:" not in captured.out + captured.err  # wandb stayed quiet
    assert init_s < 30, f"offline wandb.init took {init_s:.1f}s"


def test_wandb_no_key_goes_offline_with_one_notice(wandb_env, tmp_path):
    from gnlorp.wandb_log import WandbLogger, api_key_status

    assert api_key_status() == (False, "no API key found")
    lines = []
    out = tmp_path / "out"
    logger = WandbLogger(None, "proj", "run", {}, str(out), echo=lines.append)
    try:
        assert logger.mode == "offline"
        assert len(lines) == 1
        assert lines[0].startswith("W&B: no API key found (set WANDB_API_KEY or run 'wandb login')")
        assert str(out / "wandb") in lines[0] and "wandb sync" in lines[0]
        logger.log({"m": 1.0}, step=1)
    finally:
        logger.finish()
    assert len(_offline_runs(out)) == 1
    assert len(lines) == 1


def test_api_key_found_in_netrc_or_env(wandb_env, tmp_path, monkeypatch):
    """Only documented places: $WANDB_API_KEY, then the netrc entry `wandb login` writes (for api.wandb.ai,
    or the host of $WANDB_BASE_URL)."""
    from gnlorp.wandb_log import api_key_status

    assert api_key_status() == (False, "no API key found")
    netrc_path = Path(os.environ["NETRC"])
    netrc_path.write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
    netrc_path.chmod(0o600)
    assert api_key_status() == (True, None)
    netrc_path.write_text(f"machine wandb.example.org login user password {'k' * 40}\n")
    assert api_key_status() == (False, "no API key found")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert api_key_status() == (True, None)
    netrc_path.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "e" * 40)
    assert api_key_status() == (True, None)


def test_wandb_online_init_error_falls_back_to_offline(wandb_env, tmp_path, monkeypatch):
    from gnlorp.wandb_log import WandbLogger

    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)  # a key exists, so online is attempted
    real_init = wandb_env.init
    modes = []

    def init(*args, mode=None, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise wandb_env.errors.CommError("server unreachable\nsecond line")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb_env, "init", init)
    lines = []
    out = tmp_path / "out"
    logger = WandbLogger("online", "proj", "run", {}, str(out), echo=lines.append)
    try:
        assert modes == ["online", "offline"]
        assert logger.mode == "offline"
        assert lines == [f"W&B: online init failed (CommError: server unreachable); logging "
                         f"offline to {out / 'wandb'} — sync later with 'wandb sync'."]
        logger.log({"m": 1.0}, step=1)  # training code carries on
    finally:
        logger.finish()
    assert len(_offline_runs(out)) == 1


def test_wandb_all_inits_fail_gives_disabled(wandb_env, tmp_path, monkeypatch):
    from gnlorp.wandb_log import WandbLogger

    def init(*args, **kwargs):
        raise RuntimeError("service crashed")

    monkeypatch.setattr(wandb_env, "init", init)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    lines = []
    logger = WandbLogger("online", "proj", "run", {}, str(tmp_path / "out"), echo=lines.append)
    assert logger.mode == "disabled" and logger.run_id is None
    assert len(lines) == 2
    assert lines[0].startswith("W&B: online init failed (RuntimeError: service crashed)")
    assert lines[1] == ("W&B: offline init failed (RuntimeError: service crashed); "
                        "W&B logging disabled for this run.")
    logger.log({"m": 1.0}, step=1)
    logger.summary({"m": 1.0})
    logger.finish()
    assert len(lines) == 2


def test_wandb_log_error_disables_without_raising(wandb_env, tmp_path, monkeypatch):
    from gnlorp.wandb_log import WandbLogger

    lines = []
    logger = WandbLogger("offline", "proj", "run", {}, str(tmp_path / "out"), echo=lines.append)
    assert logger.mode == "offline"
    run = logger.run

    def boom(*args, **kwargs):
        raise ConnectionError("socket closed")

    monkeypatch.setattr(run, "log", boom)
    try:
        logger.log({"m": 1.0}, step=1)  # must not raise
        assert logger.mode == "disabled" and logger.run is None
        assert lines == ["W&B: log failed (ConnectionError: socket closed); W&B logging disabled "
                         "for the rest of this run (training continues)."]
        logger.log({"m": 2.0}, step=2)
        logger.summary({"acc": 1.0})
        logger.finish()
        assert len(lines) == 1
    finally:
        monkeypatch.undo()
        run.finish()


def test_wandb_summary_and_finish_errors_are_caught(tmp_path):
    from gnlorp.wandb_log import WandbLogger

    class BrokenRun:
        id = "abc"

        class summary:  # noqa: N801
            @staticmethod
            def update(d):
                raise ValueError("bad summary")

        def finish(self, exit_code=0):
            raise OSError("finish failed")

    for op in ("summary", "finish"):
        lines = []
        logger = WandbLogger("disabled", "proj", "run", {}, str(tmp_path), echo=lines.append)
        logger.run, logger.mode = BrokenRun(), "offline"
        if op == "summary":
            logger.summary({"a": 1})
        else:
            logger.finish(exit_code=1)
        assert logger.mode == "disabled" and logger.run is None
        assert len(lines) == 1 and lines[0].startswith(f"W&B: {op} failed (")


@pytest.mark.slow
def test_wandb_real_online_failure_falls_back(wandb_env, tmp_path, monkeypatch):
    """No network here: a real online init with a well-formed key fails within the timeout."""
    import socket

    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=2).close()
        pytest.skip("W&B server reachable; this test is for offline machines")
    except OSError:
        pass
    from gnlorp.wandb_log import WandbLogger

    monkeypatch.setenv("WANDB_API_KEY", "g" * 40)
    lines = []
    out = tmp_path / "out"
    t0 = time.monotonic()
    logger = WandbLogger(None, "proj", "run", {}, str(out), echo=lines.append,
                         online_init_timeout=3)
    try:
        assert time.monotonic() - t0 < 30
        assert logger.mode == "offline"
        assert len(lines) == 1 and lines[0].startswith("W&B: online init failed (")
    finally:
        logger.finish()
    assert len(_offline_runs(out)) == 1


def test_the_wandb_summary_holds_a_failed_runs_error_and_cudas_reserved_memory(tmp_path):
    """The tracker's summary (what W&B's run summary gets): a failed run's error line; reserved CUDA memory as the
    mean and the 99th percentile (nearest rank) of the samples taken at logged steps."""
    from gnlorp.tracker import RunTracker

    rec = RunRecord(tmp_path, "run", {"task": {"name": "rte"}})
    tracker = RunTracker(rec, main_split="validation", main_metric="accuracy", higher_is_better=True,
                         total_steps=10, log_every=1, progress=False, echo=lambda line: None)
    rec.add_note("the run failed at step 3 of 10: ValueError: boom")
    rec.status = "failed"
    assert tracker.summary()["error"] == "the run failed at step 3 of 10: ValueError: boom"
    assert tracker.reserved_memory() == {}  # no CUDA samples: nothing claimed
    tracker._reserved = list(range(1, 201))  # 200 samples: the 99th percentile is the 198th smallest
    assert tracker.reserved_memory() == {"cuda_reserved_mean_bytes": 100, "cuda_reserved_p99_bytes": 198}
