"""C4 data path and causal tokenizers, checked against hand-computed blocks and an independent SentencePiece run."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import time
from pathlib import Path

import pytest
import torch

from gnlorp.errors import UserError
from gnlorp.tasks import c4
from gnlorp import tokenizers as toks

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
C4_EN = SHARED / "c4" / "en"
TRAIN_SHARD = C4_EN / "c4-train.00000-of-01024.first1000.json.gz"
OFFLINE = os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("HF_DATASETS_OFFLINE") == "1"

from conftest import needs_shared as needs_data  # noqa: E402


@pytest.fixture(scope="module")
def mistral_tok():
    return toks.load_causal_tokenizer(toks.OFFLINE_LLAMA_TOKENIZER)


class IntTokenizer:
    """Whitespace-separated integers -> those ids; records every call."""

    eos_token_id = 0

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False, "packing must not add BOS/EOS through the tokenizer"
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        self.calls.append(len(batch))
        ids = [[int(w) for w in t.split()] for t in batch]
        return {"input_ids": ids[0] if single else ids}


class Counting:
    def __init__(self, docs):
        self.docs, self.consumed = docs, 0

    def __iter__(self):
        for d in self.docs:
            self.consumed += 1
            yield d


# ---------------------------------------------------------------- tokenizers

def test_mistral_sp_known_encoding(mistral_tok):
    assert mistral_tok("The quick brown fox", add_special_tokens=False)["input_ids"] == [415, 2936, 9060, 285, 1142]
    # default call adds no BOS either (the packer never relies on that, but the runner might)
    assert mistral_tok("The quick brown fox")["input_ids"] == [415, 2936, 9060, 285, 1142]
    assert len(mistral_tok) == 32000
    assert mistral_tok.eos_token_id == 2
    assert mistral_tok.bos_token_id == 1
    assert toks.vocab_size_for(mistral_tok, 32000) == 32000


@pytest.mark.parametrize("text", [
    "Beginners BBQ Class Taking Place in Missoula!\nDo you want to get better at making delicious BBQ?",
    "2 New England     NE  16",            # whitespace runs: transformers' plain conversion gets this wrong
    "OS X.  I don't know",
    "  leading spaces", " ", "   ", " " * 40, "a" + " " * 17 + "b", "x\n  y", "",
    "ünïcödé  ★ 1234567 \u3000wide\ttab",  # byte fallback, split digits
    "raw <s> and </s> and <unk> in web text",  # sentencepiece encodes special-token strings as text
])
def test_mistral_sp_matches_sentencepiece_directly(mistral_tok, text):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(toks.mistral_sp_model_file()))
    assert sp.get_piece_size() == 32000 and sp.eos_id() == 2 and sp.bos_id() == 1
    ids = mistral_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == sp.encode(text)
    assert mistral_tok.decode(ids) == sp.decode(ids)


def test_mistral_sp_cache_created_atomically_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("GNLORP_CACHE_DIR", str(tmp_path / "cache"))
    first = toks._mistral_sp_folder()
    assert first.parent == tmp_path / "cache" / "mistral-sp"
    assert (first / "tokenizer.model").read_bytes() == toks.mistral_sp_model_file().read_bytes()
    assert (first / "tokenizer.json").is_file()
    mtime = (first / "tokenizer.json").stat().st_mtime_ns
    assert toks._mistral_sp_folder() == first
    assert (first / "tokenizer.json").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no leftover temp folders
    tok = toks.load_causal_tokenizer("mistral-sp")
    assert tok("The quick brown fox", add_special_tokens=False)["input_ids"] == [415, 2936, 9060, 285, 1142]


def test_empty_tokenizer_guard(monkeypatch):
    class Empty:
        eos_token_id = 2

        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": []}

    with pytest.raises(UserError, match="encodes the probe sentence"):
        toks.check_tokenizer(Empty(), "fake")
    monkeypatch.setattr(toks, "_load_hub_tokenizer", lambda name: Empty())
    with pytest.raises(UserError, match=r"\[\]"):
        toks.load_causal_tokenizer("some/llama-tokenizer")


def test_tokenizer_without_eos_rejected():
    tok = IntTokenizer()
    tok.eos_token_id = None
    with pytest.raises(UserError, match="EOS"):
        toks.check_tokenizer(lambda t, add_special_tokens=True: {"input_ids": [5]}, "no-eos")
    with pytest.raises(UserError, match="EOS"):
        c4.pack_blocks(["1 2 3"], tok, 2)


def test_t5_base_offline_is_a_fast_user_error():
    t0 = time.perf_counter()
    try:
        tok = toks.load_causal_tokenizer("t5-base")
    except UserError as exc:
        assert "model.tokenizer=mistral-sp" in str(exc)
    else:  # a local HF cache has it: then it must be the paper's 32100-id tokenizer
        assert toks.vocab_size_for(tok, 32000) == 32100
    if OFFLINE:
        assert time.perf_counter() - t0 < 10


def test_vocab_size_for_widens_to_cover_every_id():
    class T5Like:
        def __len__(self):
            return 32100

        def get_vocab(self):
            return {f"t{i}": i for i in range(32100)}

    assert toks.vocab_size_for(T5Like(), 32000) == 32100
    assert toks.vocab_size_for(T5Like(), 50000) == 50000


# ---------------------------------------------------------------- packing

DOCS = ["10 11 12", "13 14", "15 16 17 18", "19"]
# stream: 10 11 12 EOS | 13 14 EOS 15 | 16 17 18 EOS | (19 EOS dropped)
EXPECTED = [[10, 11, 12, 0], [13, 14, 0, 15], [16, 17, 18, 0]]


def test_pack_blocks_exact_hand_computed():
    tok = IntTokenizer()
    blocks = c4.pack_blocks(DOCS, tok, seq_len=4)
    assert blocks.dtype == torch.long
    assert blocks.tolist() == EXPECTED
    assert c4.pack_blocks(DOCS, IntTokenizer(), seq_len=7).tolist() == [[10, 11, 12, 0, 13, 14, 0],
                                                                        [15, 16, 17, 18, 0, 19, 0]]
    assert c4.pack_blocks(DOCS, IntTokenizer(), seq_len=15).shape == (0, 15)  # 14 tokens: all remainder


def test_pack_blocks_skips_empty_docs():
    assert c4.pack_blocks(["", "10 11 12", "", "13 14", "15 16 17 18", "19", ""], IntTokenizer(), 4).tolist() == EXPECTED


def test_pack_blocks_max_blocks_stops_reading_early():
    docs = Counting(DOCS)
    blocks = c4.pack_blocks(docs, IntTokenizer(), seq_len=4, max_blocks=2)
    assert blocks.tolist() == EXPECTED[:2]
    assert docs.consumed == 3  # 8 tokens need docs 1-3 (4 + 3 + 5 ids); doc 4 is never read

    docs = Counting(DOCS)
    assert c4.pack_blocks(docs, IntTokenizer(), seq_len=4, max_blocks=10).tolist() == EXPECTED
    assert docs.consumed == 4

    docs = Counting(DOCS)
    assert c4.pack_blocks(docs, IntTokenizer(), seq_len=4, max_blocks=0).shape == (0, 4)
    assert docs.consumed == 0


def test_pack_blocks_on_an_endless_stream_terminates():
    endless = Counting(" ".join(str(100 + (i * 7 + j) % 50) for j in range(i % 9 + 1)) for i in itertools.count())
    tok = IntTokenizer()
    blocks = c4.pack_blocks(endless, tok, seq_len=16, max_blocks=50)
    assert blocks.shape == (50, 16)
    # exact number of docs needed: first doc whose cumulative (ids + EOS) reaches 800 tokens
    cum, needed = 0, 0
    while cum < 800:
        cum += needed % 9 + 1 + 1
        needed += 1
    assert needed <= endless.consumed <= needed + 2


def test_pack_blocks_batches_tokenizer_calls():
    docs = [f"{i} {i + 1} {i + 2}" for i in range(1000)]
    tok = IntTokenizer()
    blocks = c4.pack_blocks(docs, tok, seq_len=8)
    assert blocks.shape == (500, 8)  # 4000 tokens
    assert len(tok.calls) <= 4 and sum(tok.calls) == 1000
    assert blocks.flatten()[:8].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


def test_pack_blocks_rejects_bad_seq_len():
    with pytest.raises(UserError, match="seq_len"):
        c4.pack_blocks(DOCS, IntTokenizer(), seq_len=0)


# ---------------------------------------------------------------- files

def _write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_resolve_c4_dir(monkeypatch):
    monkeypatch.delenv(c4.ENV_DIR, raising=False)
    assert c4.resolve_c4_dir(None) is None
    assert c4.resolve_c4_dir("") is None
    monkeypatch.setenv(c4.ENV_DIR, "/from/env")
    assert c4.resolve_c4_dir(None) == "/from/env"
    assert c4.resolve_c4_dir("/given") == "/given"


@needs_data
def test_c4_files_real_folder():
    assert c4.c4_files(str(C4_EN), "train") == [TRAIN_SHARD]
    assert [p.name for p in c4.c4_files(str(C4_EN), "validation")] == ["c4-validation.sample2000.json.gz"]
    assert c4.c4_files(str(C4_EN.parent), "train") == [TRAIN_SHARD]  # pointed at the c4 root: uses c4/en


def test_c4_files_sorted_and_errors(tmp_path):
    for name in ["c4-train.00002-of-01024.json.gz", "c4-train.00000-of-01024.json.gz", "c4-validation.0.json.gz"]:
        _write_gz(tmp_path / name, [json.dumps({"text": name})])
    assert [p.name for p in c4.c4_files(str(tmp_path), "train")] == ["c4-train.00000-of-01024.json.gz",
                                                                      "c4-train.00002-of-01024.json.gz"]
    assert list(c4.iter_documents(str(tmp_path), "train")) == ["c4-train.00000-of-01024.json.gz",
                                                               "c4-train.00002-of-01024.json.gz"]
    with pytest.raises(UserError, match="does not exist"):
        c4.c4_files(str(tmp_path / "missing"), "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"c4-train\.\*\.json\.gz"):
        c4.c4_files(str(empty), "train")
    with pytest.raises(UserError, match="split"):
        c4.c4_files(str(tmp_path), "test")


def test_bad_shard_names_file_and_line(tmp_path):
    shard = _write_gz(tmp_path / "c4-train.00000-of-01024.json.gz",
                      [json.dumps({"text": "fine"}), "this is not json", json.dumps({"text": "never reached"})])
    docs = c4.iter_documents(str(tmp_path), "train")
    assert next(docs) == "fine"
    with pytest.raises(UserError, match=rf"{shard.name}:2 is not a JSON line"):
        next(docs)

    _write_gz(shard, [json.dumps({"text": "a"}), json.dumps({"text": "b"}), json.dumps({"url": "no text"})])
    with pytest.raises(UserError, match=rf"{shard.name}:3 has no string \"text\""):
        list(c4.iter_documents(str(tmp_path), "train"))

    shard.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(UserError, match="gzip"):
        list(c4.iter_documents(str(tmp_path), "train"))


def test_empty_dataset_is_a_user_error(tmp_path):
    _write_gz(tmp_path / "c4-validation.0.json.gz", [json.dumps({"text": "1 2 3"})])
    with pytest.raises(UserError, match="empty dataset"):
        c4.load_c4_blocks(IntTokenizer(), str(tmp_path), "validation", seq_len=8)
    assert c4.load_c4_blocks(IntTokenizer(), str(tmp_path), "validation", seq_len=2).tolist() == [[1, 2], [3, 0]]


def test_hub_failure_is_a_user_error(monkeypatch):
    import datasets

    def boom(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(UserError, match="task.data_dir"):
        next(c4.iter_documents(None, "train"))


@pytest.mark.skipif(not OFFLINE, reason="needs HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 to fail fast")
def test_hub_offline_is_fast():
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="GNLORP_C4_DIR"):
        c4.load_c4_blocks(IntTokenizer(), None, "validation", seq_len=8, max_blocks=1)
    assert time.perf_counter() - t0 < 10


# ---------------------------------------------------------------- real data

@needs_data
def test_real_train_shard_blocks(mistral_tok):
    import sentencepiece as spm

    blocks = c4.load_c4_blocks(mistral_tok, str(C4_EN), "train", seq_len=256)
    assert blocks.shape[1] == 256
    assert abs(blocks.shape[0] - 2059) <= 21  # results/README.md: ~527K tokens = 2059 blocks of 256
    assert int(blocks.min()) >= 0 and int(blocks.max()) < 32000

    # independent reference: SentencePiece directly on the raw JSON lines
    sp = spm.SentencePieceProcessor(model_file=str(toks.mistral_sp_model_file()))
    with gzip.open(TRAIN_SHARD, "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    assert len(texts) == 1000
    stream: list[int] = []
    for ids in sp.encode(texts):
        stream += ids + [2]
    assert blocks.shape[0] == len(stream) // 256
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert int((blocks == 2).sum()) == sum(1 for t in stream[: blocks.numel()] if t == 2)

    first = c4.load_c4_blocks(mistral_tok, str(C4_EN), "train", seq_len=256, max_blocks=10)
    assert torch.equal(first, blocks[:10])
