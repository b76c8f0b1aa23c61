"""The data and the device in the run identity (gnlorp/data_fingerprint.py, gnlorp/identity.py).

References: the committed results' own recorded hashes, the shared data's files hashed here with hashlib, and
the rule that a setting which changes neither training nor the report leaves the identity alone."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import GLUE_DIR, ROOT, SHARED, c4_corpus, compose, tiny_c4, tiny_glue, with_overrides
from gnlorp import data_fingerprint as fp
from gnlorp import identity
from gnlorp.methods import LOW_RANK, PROJECTED, SPECS
from gnlorp.runner import plan_run
from gnlorp.schema import RunSettings


@functools.lru_cache(maxsize=None)
def _defaults(method: str) -> str:
    base = OmegaConf.to_container(OmegaConf.structured(RunSettings))
    base["method"] = OmegaConf.to_container(OmegaConf.structured(SPECS[method].settings))
    return json.dumps(base)


def _with_defaults(config: dict) -> dict:
    """A recorded config with the settings added after it was written at their defaults (as a run sees them)."""
    base = json.loads(_defaults(config["method"]["name"]))

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    return merge(base, config)


def test_every_committed_result_keeps_its_identity():
    reference = {what: d for d, what in fp.REFERENCE.items()}
    files = [*(ROOT / "results").glob("*.json"), *(ROOT / "results" / "glue_cpu_2026-12-03").glob("*.json")]
    records = [json.loads(p.read_text()) for p in sorted(files)]
    assert len(records) > 100
    for rec in records:
        cfg = _with_defaults(rec["config"])
        method = cfg["method"]["name"]
        data = reference["c4/en"] if cfg["task"]["family"] == "c4" else reference[f"glue_data {cfg['task']['name']}"]
        settings = identity.training_settings(cfg, cfg["derived"], uses_rank=method in LOW_RANK,
                                              uses_scale=method in PROJECTED,
                                              context=identity.RunContext(data, "cpu", False))
        assert identity.identity_hash(settings) == rec["identity"]["hash"], rec["run_name"]


def test_the_reference_digests_are_the_shared_datas():
    from gnlorp.tasks.fingerprint import reference_digests

    assert reference_digests(SHARED) == fp.REFERENCE


def test_a_small_files_digest_is_its_sha256_kept_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("GNLORP_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "x.tsv"
    f.write_bytes(b"a\tb\n" * 1000)
    assert fp.file_digest(f) == hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    (kept,) = (tmp_path / "cache" / "file-digests").iterdir()
    kept.write_text("0123456789abcdef")  # the cache is read, not the file, while size and mtime stay
    assert fp.file_digest(f) == "0123456789abcdef"
    f.write_bytes(b"a\tc\n" * 1000)  # a new mtime: read again
    assert fp.file_digest(f) == hashlib.sha256(f.read_bytes()).hexdigest()[:16]


def test_a_large_files_digest_reads_fixed_slices(tmp_path, monkeypatch):
    monkeypatch.setenv("GNLORP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fp, "WHOLE_FILE_BYTES", 1000)
    monkeypatch.setattr(fp, "SLICE_BYTES", 100)
    data = bytearray(range(256)) * 40  # 10240 bytes: slices at 0, 5070, 10140
    f = tmp_path / "big"
    f.write_bytes(bytes(data))
    want = hashlib.sha256(b"10240" + data[0:100] + data[5070:5170] + data[10140:10240]).hexdigest()[:16]
    assert fp.file_digest(f) == want
    data[5100] ^= 1  # inside a slice
    f.write_bytes(bytes(data))
    assert fp.file_digest(f) != want


def _glue_copy(tmp_path: Path, name: str = "glue") -> Path:
    root = tmp_path / name
    shutil.copytree(GLUE_DIR / "RTE", root / "RTE")
    return root


def _plan(args: list[str]):
    return plan_run(compose(args))


def test_the_same_glue_files_anywhere_give_the_same_identity_and_one_changed_label_another(tmp_path):
    base = tiny_glue(tmp_path, "device=cpu")
    shared = _plan(base)
    moved = _plan(with_overrides(base, f"task.data_dir={_glue_copy(tmp_path)}"))
    assert moved.run_id == shared.run_id and "data" not in shared.settings  # the shared data: as before
    assert moved.data == shared.data and shared.data["files"][0][0] == "RTE/train.tsv"

    flipped = _glue_copy(tmp_path, "flipped")
    lines = (flipped / "RTE" / "train.tsv").read_text().splitlines(keepends=True)
    cells = lines[1].rstrip("\n").split("\t")
    cells[-1] = {"entailment": "not_entailment", "not_entailment": "entailment"}[cells[-1]]
    lines[1] = "\t".join(cells) + "\n"
    (flipped / "RTE" / "train.tsv").write_text("".join(lines))
    other = _plan(with_overrides(base, f"task.data_dir={flipped}"))
    assert other.run_id != shared.run_id and other.settings["data"] == fp.digest(other.data)
    assert fp.describe_change(other.data, shared.data) == "the data files differ (RTE/train.tsv changed)"


def test_a_c4_shard_removed_changes_the_identity_and_says_which(tmp_path):
    corpus = c4_corpus(tmp_path / "c4")
    args = with_overrides(tiny_c4(tmp_path, "device=cpu"), f"task.data_dir={corpus}")
    whole = _plan(args)
    (corpus / "c4-train.00002-of-00004.json.gz").unlink()
    less = _plan(args)
    assert less.run_id != whole.run_id and less.settings["data"] != whole.settings["data"]
    assert fp.describe_change(less.data, whole.data) == "the data files differ (c4-train.00002-of-00004.json.gz missing)"


@pytest.mark.parametrize("family, change, same", [
    ("glue", "train.eval_every=3", False),        # GLUE reports its best evaluation: the cadence changes it
    ("c4", "train.eval_every=3", True),           # C4 reports its last evaluation
    ("glue", "device=cuda", False),               # a GPU result is not a CPU result
    ("glue", "device=auto", True),                # auto is the CPU here
    ("glue", "device=auto train.parallel=fsdp train.fsdp_mixed_precision=true", True),  # casts only on GPUs
    ("c4", "train.log_every=1", True),
])
def test_the_identity_covers_what_changes_the_reported_result(tmp_path, family, change, same):
    make = tiny_glue if family == "glue" else tiny_c4
    base = make(tmp_path, "device=cpu")
    plans = _plan(base), _plan(with_overrides(base, *change.split()))
    assert (plans[0].run_id == plans[1].run_id) is same


def test_where_switchloras_pools_live_changes_nothing(tmp_path):
    base = tiny_c4(tmp_path, "device=cpu", "method=switchlora")
    on, off = _plan(base), _plan(with_overrides(base, "method.offload_candidates=false"))
    assert on.run_id == off.run_id and on.settings["method.offload_candidates"] is True
