"""The benchmark scripts run on tiny shapes and write well-formed result files. No timing assertions:
timings on a shared CI machine say nothing; only the structure of what the scripts report is checked."""

import json

import pytest

from gnlorp.bench import BENCHMARKS, timing

ENV_KEYS = {"device", "torch_threads", "packages", "git", "command", "loadavg_at_start", "loadavg_at_end"}
STATS_KEYS = {"median", "min", "max", "q1", "q3", "iqr", "n", "samples"}


def _load(out_dir, name):
    payload = json.loads((out_dir / f"{name}.json").read_text())
    assert payload["benchmark"] == name
    assert payload["schema_version"] == timing.SCHEMA_VERSION
    assert ENV_KEYS <= payload["env"].keys()
    assert payload["env"]["torch_threads"] == 1
    assert payload["env"]["device"]["type"] == "cpu"
    assert payload["env"]["command"].startswith(f"python -m gnlorp.bench.{name}")
    assert "torch" in payload["env"]["packages"] and "galore-torch" in payload["env"]["packages"]
    assert {"sha", "dirty"} <= payload["env"]["git"].keys()
    assert payload["rows"], "a benchmark without rows measured nothing"
    return payload


def _is_stats(d, n=None):
    assert STATS_KEYS <= d.keys()
    assert d["min"] <= d["median"] <= d["max"]
    assert d["q1"] <= d["median"] <= d["q3"]
    if n is not None:
        assert d["n"] == len(d["samples"]) == n


def _timed(d, n=None):
    """A figure holding wall and CPU time statistics."""
    _is_stats(d["wall"], n)
    _is_stats(d["cpu"], n)
    assert d["wall"]["min"] > 0


def test_stats_and_paired_ratio():
    s = timing.stats([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median"], s["min"], s["max"], s["q1"], s["q3"], s["iqr"]) == (3.0, 1.0, 5.0, 2.0, 4.0, 2.0)
    assert s["samples"] == [4.0, 1.0, 3.0, 2.0, 5.0] and s["n"] == 5
    r = timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 4.0, 3.0])
    assert (r["median"], r["min"], r["max"]) == (2.0, 1.0, 3.0)
    a = timing.amortized([10.0], [1.0], T=10)
    assert a["median"] == pytest.approx((10.0 + 9 * 1.0) / 10)
    with pytest.raises(ValueError):
        timing.paired_ratio([1.0], [1.0, 2.0])


def test_compare_runs_flags_only_non_overlapping_figures():
    def payload(lo, hi):
        st = timing.stats([lo, (lo + hi) / 2, hi])
        return {"benchmark": "x", "settings": {"a": 1}, "rows": [{"k": "r", "t": {"wall": st}}]}

    key = {"rows": lambda r: r["k"]}
    same = timing.compare_runs(payload(1.0, 2.0), payload(1.5, 3.0), key)
    assert same["figures_checked"] == 1 and same["figures_agreeing"] == 1
    assert (same["absolute_checked"], same["ratios_checked"]) == (1, 0)
    differ = timing.compare_runs(payload(1.0, 2.0), payload(2.5, 3.0), key)
    assert differ["figures_agreeing"] == 0 and differ["disagreements"][0]["figure"] == "t.wall"
    single = {"benchmark": "x", "settings": {"a": 1}, "rows": [{"k": "r", "t": {"wall": timing.stats([9.0])}}]}
    skipped = timing.compare_runs(payload(1.0, 2.0), single, key)  # one sample is no noise estimate
    assert skipped["figures_checked"] == 0 and skipped["figures_skipped_few_samples"] == 1
    other = payload(1.0, 2.0)
    other["settings"] = {"a": 2}
    assert timing.compare_runs(other, payload(1.0, 2.0), key)["comparable"] is False
    other["settings"] = {"a": 1, "new_flag": 3}  # a flag the older run did not have is not a difference
    assert timing.compare_runs(other, payload(1.0, 2.0), key)["comparable"] is True
    elsewhere = payload(1.0, 2.0)
    elsewhere["settings"] = {"a": 1, "out_dir": "/tmp/bench"}  # where a run was written is not what it measured
    assert timing.compare_runs(elsewhere, {**payload(1.0, 2.0), "settings": {"a": 1, "out_dir": "results/bench"}},
                               key)["comparable"] is True
    ratio = {"benchmark": "x", "settings": {"a": 1}, "rows": [{"k": "r", "ratio_t": timing.stats([1.0, 1.1, 1.2])}]}
    assert timing.compare_runs(ratio, ratio, key)["ratios_agreeing"] == 1
    assert timing.compare_runs(None, payload(1.0, 2.0), key) is None


def test_block_shapes_from_the_model_config():
    from gnlorp.bench.shapes import block_shapes, default_rank, unique_shapes

    shapes = block_shapes("llama_20m")
    assert len(shapes) == 4 * 7  # 4 layers x (q, k, v, o, gate, up, down)
    assert unique_shapes("llama_20m") == [(256, 256), (688, 256), (256, 688)]
    assert all(name.startswith("model.layers.") for name, _ in shapes)
    assert (default_rank("llama_20m"), default_rank("llama_60m")) == (64, 128)


def test_optimizer_step_writes_json(tmp_path):
    pytest.importorskip("galore_torch")
    from gnlorp.bench import optimizer_step

    optimizer_step.main(["--models", "llama_tiny", "--repeats", "2", "--refresh-repeats", "2", "--warmup", "0",
                         "--sample-s", "0.001", "--T", "50", "--out-dir", str(tmp_path),
                         "--optimizers", "adamw", "galore_torch", "galore", "galore8bit", "gradnormlorp",
                         "--refresh-optimizers", "galore_torch", "galore", "gradnormlorp"])
    payload = _load(tmp_path, "optimizer_step")
    rows = {r["optimizer"]: r for r in payload["rows"]}
    assert set(rows) == {"adamw", "galore_torch", "galore", "galore8bit", "gradnormlorp"}
    for kind, row in rows.items():
        assert row["model"] == "llama_tiny" and row["T"] == 50 and row["matrices"] == 14
        _timed(row["steady_s"], 2)
        if row["amortized_s"] is not None:
            _timed(row["amortized_s"])
        assert row["state_bytes"] > 0
        if kind == "adamw":
            assert row["refresh_s"] is None and row["rank"] is None
        elif kind == "galore8bit":  # not in --refresh-optimizers: no refresh figure, so no amortized one
            assert row["refresh_s"] is None and row["amortized_s"] is None and row["rank"] == 16
        else:
            _timed(row["refresh_s"], 2)
            assert row["rank"] == 16
    ratios = {(r["numer"], r["denom"]): r for r in payload["ratios"]}
    target = ratios[("galore", "galore_torch")]
    assert target["target_max"] == 1.0 and isinstance(target["met"], bool)
    for part in ("steady", "refresh", "amortized"):
        _is_stats(target[part]["wall"], 2)
    assert ratios[("gradnormlorp", "galore")]["target_max"] == 1.15
    assert "amortized" not in ratios[("galore8bit", "galore")]  # galore8bit's refresh was not timed
    assert "amortized" in ratios[("galore", "adamw")]  # a dense optimizer's amortized time is its steady time
    assert payload["reproducibility"] is None  # nothing to compare with in a fresh directory


def test_projector_reports_time_and_subspace_quality(tmp_path):
    from gnlorp.bench import projector

    projector.main(["--models", "llama_tiny", "--ranks", "4", "8", "--repeats", "2", "--grad-steps", "1",
                    "--grad-batch", "1", "--grad-seq-len", "16", "--out-dir", str(tmp_path)])
    payload = _load(tmp_path, "projector")
    assert len(payload["rows"]) == 3 * 2  # 3 distinct shapes x 2 ranks
    for row in payload["rows"]:
        _timed(row["exact_s"], 2)
        _timed(row["randomized_s"], 2)
        _is_stats(row["randomized_over_exact"]["wall"], 2)
        q = row["quality_real"]
        assert 0.0 < q["min"] <= q["median"] <= q["max"] <= 1.0 + 1e-4
        # llama_tiny's 2 layers hold 4 square attention matrices, 2 gate/up and 1 down matrix each
        assert q["matrices"] == {(64, 64): 8, (172, 64): 4, (64, 172): 2}[tuple(row["shape"])]
        assert 0.0 < row["quality_gaussian"] <= 1.0 + 1e-4
        assert isinstance(row["randomized_recommended"], bool)
    assert {tuple(c["shape"]) for c in payload["crossover"]} == {(64, 64), (172, 64), (64, 172)}


def test_weightnorm_and_rerun_is_compared(tmp_path):
    from gnlorp.bench import weightnorm

    argv = ["--models", "llama_tiny", "--tokens", "32", "--repeats", "3", "--warmup", "1", "--sample-s", "0.001",
            "--out-dir", str(tmp_path)]
    weightnorm.main(argv)
    payload = _load(tmp_path, "weightnorm")
    assert len(payload["rows"]) == 3 and all(r["precision"] == "fp32" for r in payload["rows"])
    for row in payload["rows"]:
        for key in ("linear_fwd_s", "weightnorm_fwd_s", "linear_fwd_bwd_s", "weightnorm_fwd_bwd_s"):
            _timed(row[key], 3)
        _is_stats(row["ratio_fwd_bwd"]["wall"], 3)
    weightnorm.main(argv)  # the second run compares itself with the first
    again = _load(tmp_path, "weightnorm")
    rep = again["reproducibility"]
    assert rep["comparable"] is True and rep["figures_checked"] > 0
    assert 0 <= rep["figures_agreeing"] <= rep["figures_checked"]


def test_end_to_end_throughput_and_tensor_bytes(tmp_path):
    from gnlorp.bench import end_to_end

    end_to_end.main(["--models", "llama_tiny", "--batch-size", "1", "--seq-len", "8", "--repeats", "2", "--warmup", "1",
                     "--no-memory", "--out-dir", str(tmp_path)])
    payload = _load(tmp_path, "end_to_end")
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == set(end_to_end.METHODS) >= {"full", "lora", "galore", "gradnormlorp", "relora", "switchlora"}
    assert "dora" not in rows  # a variant of LoRA (its spec's variant_of)
    assert payload["settings"]["precision"] == "fp32"  # auto on CPU
    for m, row in rows.items():
        _timed(row["step_s"], 2)
        _is_stats(row["tokens_per_s"], 2)
        _is_stats(row["amortized_tokens_per_s"], 2)
        assert row["tokens_per_step"] == 8
        tb = row["tensor_bytes"]
        assert tb["total"] == tb["parameters"] + tb["gradients"] + tb["optimizer_state"] > 0
        # only these refresh a projector (GaLore's SVD, APOLLO's random draw, Fira's SVD)
        assert (row["refresh_step_s"] is None) == (m not in ("galore", "gradnormlorp", "apollo", "apollo_mini", "fira"))
    # AdamW keeps two moments of every parameter; the low-rank methods less
    assert rows["galore"]["tensor_bytes"]["optimizer_state"] < rows["full"]["tensor_bytes"]["optimizer_state"]
    ratio = {r["method"]: r for r in payload["ratios"]}
    assert ratio["gradnormlorp"]["target_min"] == 0.85 and isinstance(ratio["gradnormlorp"]["met"], bool)


@pytest.mark.slow
def test_end_to_end_memory_probe(tmp_path):
    from gnlorp.bench import end_to_end

    end_to_end.main(["--models", "llama_tiny", "--batch-size", "1", "--seq-len", "8", "--repeats", "1", "--warmup", "1",
                     "--methods", "full", "gradnormlorp", "--probe-steps", "1", "--out-dir", str(tmp_path)])
    payload = _load(tmp_path, "end_to_end")
    for row in payload["rows"]:
        peak = row["peak_memory"]
        assert peak["kind"] == "cpu_rss" and peak["peak_rss_bytes"] >= peak["start_rss_bytes"] > 0
        tb = row["tensor_bytes"]
        assert tb["gradients_counted_after_backward"] == tb["gradients"]


def test_suite_runs_the_chosen_benchmarks(tmp_path, capsys):
    from gnlorp.bench.__main__ import main

    assert set(BENCHMARKS) == {"optimizer_step", "projector", "weightnorm", "end_to_end", "loader"}
    main(["--only", "weightnorm", "--out-dir", str(tmp_path), "--", "--models", "llama_tiny", "--tokens", "16",
          "--repeats", "1", "--warmup", "0", "--sample-s", "0.001"])
    out = capsys.readouterr().out
    assert "## weightnorm" in out and "| model | shape (out x in)" in out
    payload = _load(tmp_path, "weightnorm")
    assert "--tokens 16" in payload["env"]["command"]


def test_loader_throughput_beside_training(tmp_path):
    from conftest import C4_DIR

    from gnlorp.bench import loader

    if not C4_DIR.is_dir():
        pytest.skip(f"shared C4 data not found at {C4_DIR}")
    loader.main(["--model", "llama_tiny", "--batch-size", "4", "--seq-len", "32", "--streams", "2", "--batches", "3",
                 "--repeats", "2", "--warmup", "0", "--data-dir", str(C4_DIR), "--out-dir", str(tmp_path)])
    [row] = _load(tmp_path, "loader")["rows"]
    _is_stats(row["loader_tokens_per_s"], 2)
    _is_stats(row["train_tokens_per_s"], 3)
    assert row["tokens_per_batch"] == 128 and row["first_batch_s"] > 0
    assert row["ratio"] == pytest.approx(row["loader_tokens_per_s"]["median"] / row["train_tokens_per_s"]["median"])
    assert row["met"] == (row["ratio"] >= 20)
