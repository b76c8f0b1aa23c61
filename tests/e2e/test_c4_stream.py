"""Streaming C4: document assignment, packing, shuffling and resumption checked against hand-computed streams,
sentencepiece on the raw shard, and uninterrupted single-process runs (1 and 2 processes, torchrun + gloo)."""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import C4_DIR, ROOT, compose, needs_shared, tiny_c4
from gnlorp.errors import UserError
from gnlorp.tasks import c4
from gnlorp.tasks.c4_stream import BlockStream, LocalDocs, StreamBatches, c4_train_stream

TRAIN_SHARD = C4_DIR / "c4-train.00000-of-01024.first1000.json.gz"
needs_data = needs_shared


class IntTokenizer:
    """Whitespace-separated integers -> those ids; counts the documents it encodes."""

    eos_token_id = 0

    def __init__(self):
        self.encoded = 0

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        self.encoded += len(texts)
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


def _shards(folder: Path, docs_per_file: list[list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f, docs in enumerate(docs_per_file):
        with gzip.open(folder / f"c4-train.{f:05d}-of-01024.json.gz", "wt", encoding="utf-8") as fh:
            fh.write("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return folder


def _doc(f: int, d: int) -> str:
    """Document d of file f: 1 to 4 ids that name it (f * 1000 + d * 10 + k)."""
    return " ".join(str(f * 1000 + d * 10 + k + 1) for k in range(d % 4 + 1))


def _texts(docs: LocalDocs, n: int) -> list[str]:
    it = iter(docs)
    return [next(it) for _ in range(n)]


# ---------------------------------------------------------------- which stream reads which document

def test_fewer_shards_than_streams_split_by_line(tmp_path):
    files = c4.c4_files(str(_shards(tmp_path, [[_doc(0, d) for d in range(5)], [_doc(1, d) for d in range(3)]])), "train")
    # 2 files < 3 streams: stream s takes lines i % 3 == s of each file, file after file, then the next pass
    assert _texts(LocalDocs(files, 0, 3), 5) == [_doc(0, 0), _doc(0, 3), _doc(1, 0), _doc(0, 0), _doc(0, 3)]
    assert _texts(LocalDocs(files, 1, 3), 4) == [_doc(0, 1), _doc(0, 4), _doc(1, 1), _doc(0, 1)]
    assert _texts(LocalDocs(files, 2, 3), 3) == [_doc(0, 2), _doc(1, 2), _doc(0, 2)]


def test_more_shards_than_streams_split_by_shard(tmp_path):
    files = c4.c4_files(str(_shards(tmp_path, [[_doc(f, d) for d in range(2)] for f in range(5)])), "train")
    docs = LocalDocs(files, 1, 2)  # files 1 and 3
    assert _texts(docs, 5) == [_doc(1, 0), _doc(1, 1), _doc(3, 0), _doc(3, 1), _doc(1, 0)]
    assert docs.position == {"pass": 1, "file": 0, "line": 1}


def test_a_stream_without_documents_is_a_user_error(tmp_path):
    files = c4.c4_files(str(_shards(tmp_path, [[_doc(0, 0)]])), "train")
    with pytest.raises(UserError, match="task.streams"):
        _texts(LocalDocs(files, 1, 2), 1)


def test_hub_path_splits_by_node_and_resumes_across_passes(tmp_path):
    """The hub code path on a local streaming `datasets` dataset (the hub itself is unreachable here)."""
    import datasets

    from gnlorp.tasks.c4_stream import HubDocs

    folder = _shards(tmp_path, [[_doc(f, d) for d in range(5)] for f in range(4)])
    files = [str(p) for p in c4.c4_files(str(folder), "train")]
    load = lambda: datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    expected = [_doc(f, d) for f in (1, 3) for d in range(5)]  # 4 shards over 2 streams: stream 1 has shards 1, 3
    for n in (2, 7, 12):
        docs = HubDocs(1, 2, load=load)
        it = iter(docs)
        assert [next(it) for _ in range(n)] == (expected * 2)[:n]
        position = copy.deepcopy(docs.position)
        rest = [next(it) for _ in range(12)]
        assert rest == (expected * 4)[n:n + 12]
        again = HubDocs(1, 2, load=load)
        again.position = position
        resumed = iter(again)
        assert [next(resumed) for _ in range(12)] == rest


# ---------------------------------------------------------------- packing and shuffling

def _stream(files, s=0, n=1, buffer=1, seed=0, tok=None):
    return BlockStream(LocalDocs(files, s, n), tok or IntTokenizer(), 4, buffer, seed=seed, index=s)


def test_unshuffled_stream_packs_documents_with_eos_across_passes(tmp_path):
    files = c4.c4_files(str(_shards(tmp_path, [["10 11 12", "13 14", "", "15 16 17 18", "19"]])), "train")
    st = _stream(files)
    # 10 11 12 EOS | 13 14 EOS 15 | 16 17 18 EOS | 19 EOS 10 11 | 12 EOS 13 14 | ... (the empty document adds nothing)
    assert [st.next().tolist() for _ in range(5)] == [[10, 11, 12, 0], [13, 14, 0, 15], [16, 17, 18, 0],
                                                      [19, 0, 10, 11], [12, 0, 13, 14]]
    assert st.docs.position["pass"] >= 1


def test_shuffle_is_a_seeded_permutation_within_a_bounded_buffer(tmp_path):
    files = c4.c4_files(str(_shards(tmp_path, [[_doc(0, d) for d in range(400)]])), "train")
    unshuffled = _stream(files)
    plain = [tuple(unshuffled.next().tolist()) for _ in range(215)]
    for seed in (0, 1):
        st = _stream(files, buffer=16, seed=seed)
        shuffled = [tuple(st.next().tolist()) for _ in range(200)]
        assert len(st.buffer) == 16 and st.size <= 15
        # every block given out is one of the packed blocks read so far, none twice, and none from beyond the buffer
        for i, block in enumerate(shuffled):
            assert block in plain[:i + 16]
        assert len(set(shuffled)) == len(shuffled)
        assert shuffled != plain[:200]
        if seed == 0:
            first = shuffled
    assert shuffled != first  # the seed changes the order
    again = _stream(files, buffer=16, seed=1)
    assert [tuple(again.next().tolist()) for _ in range(200)] == shuffled


def test_stream_state_resumes_exactly_without_retokenizing(tmp_path):
    files = c4.c4_files(str(_shards(tmp_path, [[_doc(0, d) for d in range(12)], [_doc(1, d) for d in range(9)]])), "train")
    st = _stream(files, buffer=8, seed=3)
    head = [st.next() for _ in range(37)]  # past the end of the data: into the second pass
    state = st.state()
    tail = [st.next().tolist() for _ in range(40)]
    assert state["position"]["pass"] >= 1 and len(head) == 37
    tok = IntTokenizer()
    again = _stream(files, buffer=8, seed=3, tok=tok)
    again.load(torch.load(_save(tmp_path, state), weights_only=True))
    assert [again.next().tolist() for _ in range(40)] == tail
    assert tok.encoded <= again.documents - state["documents"]  # only documents after the position were encoded


def _save(tmp_path: Path, obj) -> Path:
    path = tmp_path / f"state-{random.random()}.pt"
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------- batches over processes

def _loader(files, batch, streams, world=1, rank=0, buffer=4, seed=0):
    make = lambda s: BlockStream(LocalDocs(files, s, streams), IntTokenizer(), 4, buffer, seed=seed, index=s)
    return StreamBatches(make, streams, batch, 4, world_size=world, rank=rank)


def _take(loader, steps):
    out = []
    for _ in range(steps):
        batch = loader.next_batch()
        share = batch[loader.rank * loader.share:(loader.rank + 1) * loader.share]
        out.append(loader.collate(share)["input_ids"])
    return out


def test_two_ranks_share_every_global_batch_and_a_resume_may_change_world_size(tmp_path):
    files = c4.c4_files(str(_shards(tmp_path, [[_doc(f, d) for d in range(40)] for f in range(3)])), "train")
    one = _loader(files, 8, 4)
    expected = _take(one, 12)
    one.close()
    assert all(b.shape == (8, 4) and b.dtype == torch.long for b in expected)
    ranks = [_loader(files, 8, 4, 2, r) for r in range(2)]
    parts = [_take(r, 5) for r in ranks]
    for step in range(5):
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]]), expected[step])
    merged = {k: v for r in ranks for k, v in r.state_dict().items()}
    for r in ranks:
        r.close()
    resumed = _loader(files, 8, 4)
    resumed.load_state_dict(torch.load(_save(tmp_path, merged), weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(_take(resumed, 7), expected[5:]))
    stats = resumed.merge_stats([resumed.stats()])
    assert stats["data_passes"] >= 1 and stats["data_documents"] > 0
    resumed.close()
    with pytest.raises(UserError, match="task.streams=4"):
        _loader(files, 8, 8).load_state_dict(merged)


@pytest.mark.parametrize("batch,streams,world,fragment", [(8, 3, 1, "task.streams=3 must be a positive integer dividing"),
                                                          (8, 4, 3, "multiple of the 3 processes")])
def test_streams_must_fit_batch_and_processes(batch, streams, world, fragment):
    with pytest.raises(UserError, match=fragment):
        StreamBatches(lambda s: None, streams, batch, 4, world_size=world, rank=0)


def test_a_bad_shard_is_reported_by_the_trainer(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    with gzip.open(folder / "c4-train.00000-of-01024.json.gz", "wt") as fh:
        fh.write(json.dumps({"text": "1 2 3"}) + "\nnot json\n")
    loader = c4_train_stream(IntTokenizer(), str(folder), 4, 2, num_streams=1, buffer_blocks=1, seed=0)
    with pytest.raises(UserError, match=r"json.gz:2 is not a JSON line"):
        _take(loader, 3)


# ---------------------------------------------------------------- real data and tokenizer

@needs_data
def test_real_shard_streams_match_sentencepiece(tmp_path):
    import sentencepiece as spm

    from gnlorp import tokenizers as toks

    tok = toks.load_causal_tokenizer(toks.OFFLINE_LLAMA_TOKENIZER)
    sp = spm.SentencePieceProcessor(model_file=str(toks.mistral_sp_model_file()))
    with gzip.open(TRAIN_SHARD, "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    # 2 streams, no shuffling: readable by hand
    loader = c4_train_stream(tok, str(C4_DIR), 256, 4, num_streams=2, buffer_blocks=1, seed=0)
    got = _take(loader, 6)
    loader.close()
    for s in range(2):  # stream s: documents s, s + 2, ... packed with EOS (id 2) after each
        ids: list[int] = []
        for t in texts[s::2][:40]:
            ids += sp.encode(t) + [2]
        blocks = torch.cat([b[2 * s:2 * s + 2] for b in got])
        assert blocks.flatten().tolist() == ids[:blocks.numel()]


def test_validation_cache_is_reused_and_keyed(tmp_path):
    _shards(tmp_path / "data", [])
    with gzip.open(tmp_path / "data" / "c4-validation.00000-of-00008.json.gz", "wt") as fh:
        fh.write("".join(json.dumps({"text": _doc(0, d)}) + "\n" for d in range(50)))
    tok = IntTokenizer()
    first = c4.cached_eval_blocks(tok, str(tmp_path / "data"), 4, 10, cache_dir=str(tmp_path / "cache"))
    assert first.dtype == torch.long and first.tolist() == c4.load_c4_blocks(IntTokenizer(), str(tmp_path / "data"),
                                                                            "validation", 4, 10).tolist()
    encoded = tok.encoded
    assert torch.equal(c4.cached_eval_blocks(tok, str(tmp_path / "data"), 4, 10, cache_dir=str(tmp_path / "cache")), first)
    assert tok.encoded == encoded  # read from the cache, not tokenized again
    assert c4.cached_eval_blocks(tok, str(tmp_path / "data"), 4, 5, cache_dir=str(tmp_path / "cache")).shape == (5, 4)
    assert c4.cached_eval_blocks(tok, str(tmp_path / "data"), 2, 5, cache_dir=str(tmp_path / "cache")).shape == (5, 2)
    files = sorted(p.name for p in (tmp_path / "cache" / "c4-eval").iterdir())
    assert len(files) == 3 and not any(".tmp-" in f for f in files)


# ---------------------------------------------------------------- end to end: 1 and 2 processes, stop and resume

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], out: Path, cwd: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={_free_port()}", str(ROOT / "tests" / "e2e" / "record_batches.py"), str(out), *args],
                       cwd=cwd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]


def _curve(results: Path) -> list:
    return json.loads(next(results.glob("*.json")).read_text())["loss_curve"]


@pytest.mark.slow
def test_two_processes_read_disjoint_documents_and_resume_to_the_token(tmp_path):
    from record_batches import run_recording

    common = ["method=galore", "train.max_steps=8", "train.eval_every=null", "device=cpu", "train.batch_size=8",
              "task.shuffle_blocks=4", "train.num_threads=1"]
    one = run_recording(tiny_c4(tmp_path / "one", *common), str(tmp_path / "one"))
    assert one.status == "complete" and one.record["train"]["data_passes"] >= 1
    straight = torch.load(tmp_path / "one" / "rank0.pt")["batches"]
    assert len(straight) == 8 and straight[0].shape == (8, 64)

    # 1 process, stopped at step 3 and resumed
    part = run_recording(tiny_c4(tmp_path / "r1", *common, "train.stop_at_step=3"), str(tmp_path / "r1a"))
    assert part.status == "incomplete"
    run_recording(tiny_c4(tmp_path / "r1", *common, "resume=true"), str(tmp_path / "r1b"))
    resumed = torch.load(tmp_path / "r1a" / "rank0.pt")["batches"] + torch.load(tmp_path / "r1b" / "rank0.pt")["batches"]
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight)) and len(resumed) == 8
    assert _curve(tmp_path / "r1" / "results") == one.record["loss_curve"]

    # 2 processes (torchrun, gloo), stopped at step 3, then resumed
    two = tmp_path / "two"
    _torchrun(tiny_c4(two, *common, "train.stop_at_step=3"), two / "a", tmp_path)
    _torchrun(tiny_c4(two, *common, "resume=true"), two / "b", tmp_path)
    ranks = [[torch.load(two / run / f"rank{r}.pt") for run in ("a", "b")] for r in range(2)]
    docs = [{d for rec in ranks[r] for d in rec["docs"]} for r in range(2)]
    assert docs[0] and docs[1] and not docs[0] & docs[1]  # disjoint documents
    per_rank = [ranks[r][0]["batches"] + ranks[r][1]["batches"] for r in range(2)]
    assert [len(p) for p in per_rank] == [8, 8]
    for step in range(8):  # each global batch: rank 0's half then rank 1's == the one-process batch
        assert per_rank[0][step].shape == (4, 64)
        assert torch.equal(torch.cat([per_rank[0][step], per_rank[1][step]]), straight[step])
    c1, c2 = one.record["loss_curve"], _curve(two / "results")
    assert [s for s, _ in c2] == list(range(1, 9))
    assert max(abs(a - b) for (_, a), (_, b) in zip(c1, c2)) <= 1e-4


# ---------------------------------------------------------------- start-up independent of corpus size

_FIRST_STEP = r"""
import json, resource, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from conftest import compose
from gnlorp import train
from gnlorp.runner import run
seen = {}
step = train.TrainLoop._step
def first(self, batch):
    seen.setdefault("first_step_s", time.perf_counter() - t0)
    return step(self, batch)
train.TrainLoop._step = first
out = run(compose(sys.argv[2:]), echo=lambda *a: None)
print(json.dumps({**seen, "status": out.status, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _big_corpus(folder: Path, min_bytes: int = 100 * 2**20, files: int = 16) -> Path:
    """The shared shard's documents, repeated in shuffled orders, as `files` json.gz shards of >= min_bytes in all:
    10 shuffled orders are compressed once each and concatenated as gzip members."""
    import gzip as gz

    with gz.open(TRAIN_SHARD, "rb") as fh:
        lines = [line for line in fh if line.strip()]
    rng = random.Random(0)
    members = []
    for _ in range(10):
        rng.shuffle(lines)
        members.append(gz.compress(b"".join(lines), compresslevel=1))
    folder.mkdir(parents=True)
    per_file = -(-min_bytes // (files * len(members[0]))) + 1
    for f in range(files):
        with open(folder / f"c4-train.{f:05d}-of-01024.json.gz", "wb") as out:
            for _ in range(per_file):
                out.write(members[rng.randrange(len(members))])
    (folder / "c4-validation.00000-of-00008.json.gz").symlink_to(next(C4_DIR.glob("c4-validation.*.json.gz")))
    return folder


@pytest.mark.slow
@needs_data
def test_start_up_time_and_memory_do_not_grow_with_the_corpus(tmp_path):
    big = _big_corpus(tmp_path / "big")
    assert sum(p.stat().st_size for p in big.glob("c4-train.*")) >= 100 * 2**20

    def measure(data_dir: Path, sub: str) -> dict:
        args = tiny_c4(tmp_path / sub, f"task.data_dir={data_dir}", "task.seq_len=256", "task.streams=8",
                       "task.shuffle_blocks=1024", "train.batch_size=8", "train.max_steps=1", "train.eval_every=null",
                       "task.eval_tokens=512", "train.num_threads=1", "keep_checkpoint=false", "method=full")
        p = subprocess.run([sys.executable, "-c", _FIRST_STEP, str(ROOT / "tests"), *args], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert out["status"] == "complete"
        return out

    runs = {"small": [], "big": []}
    for i in range(2):  # alternated, so that load from other processes falls on both; the minimum of each
        runs["small"].append(measure(C4_DIR, f"s{i}"))
        runs["big"].append(measure(big, f"b{i}"))
        t = {k: min(r["first_step_s"] for r in v) for k, v in runs.items()}
        rss = {k: min(r["peak_rss_kib"] for r in v) for k, v in runs.items()}
        if t["big"] <= 1.5 * t["small"] and rss["big"] <= 1.2 * rss["small"]:
            break  # a second round only where the first looks like growth (or a load spike on one run)
    print(f"time to first step: {t}; peak RSS KiB: {rss} ({len(runs['big'])} rounds)")
    # reading a 100 MiB corpus would take many times the small one's start-up; 1.5x leaves room for a loaded machine
    assert t["big"] <= 1.5 * t["small"], t
    assert rss["big"] <= 1.2 * rss["small"], rss


# ---------------------------------------------------------------- the paper recipes, CPU-sized

# what the README's C4 section names for trying a paper recipe on a CPU
CPU_SIZED = ["precision=fp32", f"task.data_dir={C4_DIR}", "model.tokenizer=mistral-sp", "train.batch_size=8",
             "train.micro_batch_size=8", "train.max_steps=3", "task.eval_tokens=2048"]


@pytest.mark.parametrize("size", ["60m", "130m", "350m", "1b", "7b"])
def test_every_paper_recipe_composes_cpu_sized(size):
    from gnlorp.runner import check_config

    cfg = compose([f"experiment=c4_llama_{size}", "method=gradnormlorp", *CPU_SIZED])
    assert (cfg.model.name, cfg.train.max_steps, cfg.train.batch_size, cfg.precision.name) == (f"llama_{size}", 3, 8, "fp32")
    assert check_config(cfg)["accumulation_steps"] == 1
    StreamBatches(lambda s: None, cfg.task.streams, cfg.train.batch_size, cfg.task.seq_len)  # streams fit the batch
    paper = compose([f"experiment=c4_llama_{size}", "method=gradnormlorp"])
    StreamBatches(lambda s: None, paper.task.streams, paper.train.batch_size, paper.task.seq_len, world_size=8)
    assert paper.task.data_dir is None and paper.train.batch_size == 512


@pytest.mark.slow
@needs_data
def test_paper_60m_recipe_runs_on_the_cpu(tmp_path):
    """The README's CPU-sized command (its 3 steps composed above) for 1 step, many seconds on one thread: the
    real 60M model, GaLore-family projections at rank 128, the streamed batch and the evaluation run at the paper's
    shapes. Later steps from the optimizer state a step left are checked on LLaMA-tiny (test_failures.py's
    stop/resume runs, 8-10 steps of GradNormLoRP and GaLore)."""
    steps = 1
    args = ["experiment=c4_llama_60m", "method=gradnormlorp", *CPU_SIZED, f"task.cache_dir={tmp_path}/cache",
            f"results_dir={tmp_path}/results", f"checkpoint_dir={tmp_path}/ck", "logger.mode=disabled",
            "train.num_threads=1", f"train.max_steps={steps}"]
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    (result,) = (tmp_path / "results").glob("c4-llama_60m-gradnormlorp-r128-fp32-s0-*.json")  # <name>-<hash>
    rec = json.loads(result.read_text())
    assert rec["status"] == "complete" and rec["train"]["steps"] == steps and rec["train"]["tokens"] == steps * 8 * 256
    assert rec["train"]["data_passes"] == 1 and rec["eval"]["validation"]["tokens"] == 8 * 255
