"""C4 (allenai/c4, `en`) for LLaMA pre-training: documents from local `c4-<split>.*.json.gz` shards (the original
release's layout) or streamed from the hub, tokenized and packed into fixed-length blocks.

Packing (as in GaLore's pre-training data path, minus padding): each document is tokenized without special
tokens, followed by one EOS, all documents are concatenated, and the stream is cut into consecutive blocks of
`seq_len` ids; the incomplete tail is dropped. Empty documents are skipped (they would add a lone EOS).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from gnlorp.errors import UserError
from gnlorp.tasks import resolve_data_dir

ENV_DIR = "GNLORP_C4_DIR"
HUB_ID = ("allenai/c4", "en")
SPLITS = ("train", "validation")

_BATCH_DOCS = 256       # documents per tokenizer call when there is no max_blocks budget to respect
_BUDGET_FILL = 0.5      # with max_blocks: a batch aims at this fraction of the tokens still needed


def resolve_c4_dir(data_dir: str | None) -> str | None:
    """task.data_dir if given, else $GNLORP_C4_DIR, else None (= stream from the hub)."""
    return resolve_data_dir(data_dir, ENV_DIR)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"C4 split {split!r} is not one of {', '.join(SPLITS)}; use split=train or split=validation.")


def c4_files(data_dir: str, split: str) -> list[Path]:
    """Sorted `c4-<split>.*.json.gz` files in data_dir (or in data_dir/en, when pointed at the c4 root)."""
    _check_split(split)
    root = Path(os.path.expanduser(str(data_dir)))
    pattern = f"c4-{split}.*.json.gz"
    if not root.is_dir():
        raise UserError(f"C4 data folder {str(root)!r} does not exist (from task.data_dir or ${ENV_DIR}); point it at "
                        f"a folder of {pattern} files, or unset both to stream allenai/c4 from the hub.")
    for folder in (root, root / "en"):  # glob and stat raise PermissionError in a folder that cannot be read
        if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
            raise UserError(f"C4 data folder {str(folder)!r} cannot be read (permission denied); fix its permissions "
                            f"(chmod a+rx) or point task.data_dir (or ${ENV_DIR}) at a readable copy.")
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files and (root / "en").is_dir():
        files = sorted(p for p in (root / "en").glob(pattern) if p.is_file())
    if not files:
        raise UserError(f"C4 data folder {str(root)!r} has no files matching {pattern!r}; point task.data_dir (or "
                        f"${ENV_DIR}) at the folder holding the C4 en shards, e.g. .../c4/en.")
    return files


def iter_file_docs(path: Path, start: int = 0, stride: int = 1, offset: int = 0) -> Iterator[tuple[int, str]]:
    """(line index, text) of the documents on the lines i >= start with i % stride == offset of one shard
    (0-based line indices, blank lines count as lines); the other lines are skipped unparsed."""
    lineno = 0
    try:
        with gzip.open(path, "rb") as fh:
            for index, line in enumerate(fh):
                lineno = index + 1
                if index < start or index % stride != offset or not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except UnicodeDecodeError as exc:
                    raise UserError(f"{path}:{lineno} is not UTF-8 ({exc}); re-download or remove that file.") from None
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno} is not a JSON line ({exc.msg}); C4 shards must hold one "
                                    f"JSON object with a \"text\" field per line, so fix or remove that file.") from None
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise UserError(f"{path}:{lineno} has no string \"text\" field; C4 shards must hold one JSON "
                                    f"object with a \"text\" field per line, so fix or remove that file.")
                yield index, text
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        where = f"{path}:{lineno + 1}" if lineno else str(path)  # lineno: lines read before the failure
        raise UserError(f"{where} could not be read as gzip-compressed UTF-8 JSON lines ({exc}); "
                        f"re-download or remove that file.") from None


def _iter_local(files: list[Path]) -> Iterator[str]:
    for path in files:
        for _, text in iter_file_docs(path):
            yield text


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _iter_hub(split: str) -> Iterator[str]:
    hint = (f"to read local shards instead, set task.data_dir (or ${ENV_DIR}) to a folder of c4-{split}.*.json.gz "
            f"files, e.g. ../shared/data/c4/en")
    try:
        import datasets

        iterator = iter(datasets.load_dataset(*HUB_ID, split=split, streaming=True))
    except Exception as exc:  # offline, no network, missing auth ...: all user-fixable by pointing at local data
        raise UserError(f"could not stream {HUB_ID[0]} ({HUB_ID[1]}, {split}) from the Hugging Face hub "
                        f"({_first_line(exc)}); {hint}.") from None
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise UserError(f"streaming {HUB_ID[0]} ({split}) from the hub failed ({_first_line(exc)}); {hint}.") from None
        yield record["text"]


def iter_documents(data_dir: str | None, split: str) -> Iterator[str]:
    """The "text" of every document: from the local shards in file order, or streamed from the hub if
    data_dir is None. Errors (bad line, offline hub) are UserErrors, raised when iteration reaches them."""
    _check_split(split)
    if data_dir is not None:
        return _iter_local(c4_files(data_dir, split))
    return _iter_hub(split)


def pack_blocks(docs: Iterable[str], tokenizer, seq_len: int, max_blocks: int | None = None) -> torch.LongTensor:
    """[N, seq_len] int64 blocks: doc1 ids, EOS, doc2 ids, EOS, ... cut into consecutive seq_len blocks, tail dropped.

    The tokenizer is called on batches of documents (HF-style: tokenizer(list, add_special_tokens=False)
    ["input_ids"], plus tokenizer.eos_token_id). With max_blocks, documents are pulled lazily: each batch is
    sized (from the tokens-per-character seen so far) to fill about half of the tokens still needed, so the
    iterator is read only slightly, if at all, past the document that completes the last block.
    """
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise UserError(f"seq_len={seq_len!r} must be a positive integer; fix task.seq_len (the paper uses 256).")
    if max_blocks is not None and max_blocks < 0:
        raise UserError(f"max_blocks={max_blocks!r} must be >= 0 or null (no limit); fix the task's block limit.")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError("the tokenizer has no EOS token, which C4 packing puts between documents; "
                        "use model.tokenizer=t5-base or model.tokenizer=mistral-sp.")
    if max_blocks == 0:
        return torch.empty((0, seq_len), dtype=torch.long)

    budget = None if max_blocks is None else max_blocks * seq_len
    chunks: list[np.ndarray] = []
    total = 0
    chars_seen = tokens_seen = 0
    doc_iter = iter(docs)
    exhausted = False
    while not exhausted and (budget is None or total < budget):
        batch: list[str] = []
        batch_chars = 0
        while len(batch) < _BATCH_DOCS:
            if budget is not None and batch:
                # Estimated tokens of the batch so far vs the share of the remaining budget we aim to fill.
                ratio = tokens_seen / chars_seen if chars_seen else None
                if ratio is None or (batch_chars + len(batch)) * ratio >= _BUDGET_FILL * (budget - total):
                    break
            try:
                doc = next(doc_iter)
            except StopIteration:
                exhausted = True
                break
            if not doc:
                continue
            batch.append(doc)
            batch_chars += len(doc)
        if not batch:
            break
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for doc, ids in zip(batch, encoded):
            arr = np.empty(len(ids) + 1, dtype=np.int64)
            arr[:-1] = ids
            arr[-1] = eos
            chunks.append(arr)
            total += arr.size
            chars_seen += len(doc) + 1
            tokens_seen += arr.size
            if budget is not None and total >= budget:
                break

    n_blocks = total // seq_len
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks == 0:
        return torch.empty((0, seq_len), dtype=torch.long)
    flat = np.concatenate(chunks)[: n_blocks * seq_len]
    return torch.from_numpy(flat).view(n_blocks, seq_len)


def load_c4_blocks(tokenizer, data_dir: str | None, split: str, seq_len: int,
                   max_blocks: int | None = None) -> torch.LongTensor:
    """Packed [N, seq_len] blocks of C4 `split` from data_dir (None = hub); UserError if N == 0."""
    docs = iter_documents(data_dir, split)
    try:
        blocks = pack_blocks(docs, tokenizer, seq_len, max_blocks)
    finally:
        close = getattr(docs, "close", None)
        if close is not None:
            close()
    if blocks.shape[0] == 0:
        source = data_dir if data_dir is not None else f"{HUB_ID[0]} on the hub"
        raise UserError(f"empty dataset: C4 {split} from {source} gave 0 blocks of {seq_len} tokens "
                        f"(max_blocks={max_blocks}); use more or longer documents, a smaller task.seq_len, or "
                        f"max_blocks >= 1.")
    return blocks


def _source_id(data_dir: str | None, split: str) -> list:
    if data_dir is None:
        return ["hub", *HUB_ID, split]
    from gnlorp.data_fingerprint import local_fingerprint

    return local_fingerprint(data_dir, c4_files(data_dir, split))["files"]


def _blocks_checksum(blocks: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(blocks.to(torch.int32).contiguous().numpy().tobytes()).hexdigest()


def cached_eval_blocks(tokenizer, data_dir: str | None, seq_len: int, n_blocks: int, *, cache_dir: str | None = None,
                       split: str = "validation") -> torch.LongTensor:
    """The first n_blocks packed blocks of C4 `split` (load_c4_blocks), tokenized once and kept in
    <cache_dir>/c4-eval/ (default: the gnlorp cache, ~/.cache/gnlorp) under a name hashed from the tokenizer and
    the EOS id packing puts between documents, the source files (names, sizes, content hashes) or hub id, seq_len
    and n_blocks; written atomically with a checksum of the blocks (concurrent runs race harmlessly) and shared
    by every method, seed and process. A cached file that fails its checksum is refused (UserError naming it)."""
    import hashlib

    from gnlorp.data_fingerprint import cache_root
    from gnlorp.tokenizers import tokenizer_fingerprint

    key = json.dumps({"format": 2, "tokenizer": tokenizer_fingerprint(tokenizer),
                      "eos": getattr(tokenizer, "eos_token_id", None), "source": _source_id(data_dir, split),
                      "seq_len": seq_len, "blocks": n_blocks})
    folder = Path(os.path.expanduser(cache_dir)) if cache_dir else cache_root()
    path = folder / "c4-eval" / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
    if path.is_file():
        return _load_cached_blocks(path, key)
    import sys
    import time

    started = time.monotonic()
    print(f"tokenizing C4 {split}: {n_blocks} blocks of {seq_len} tokens, once (cached in {path.parent})",
          file=sys.stderr, flush=True)
    blocks = load_c4_blocks(tokenizer, data_dir, split, seq_len, n_blocks)
    print(f"tokenized C4 {split} in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{id(blocks)}")
        torch.save({"key": key, "blocks": blocks.to(torch.int32), "sha256": _blocks_checksum(blocks)}, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the blocks are still right, just not kept
    return blocks


def _load_cached_blocks(path: Path, key: str) -> torch.LongTensor:
    damaged = (f"the cached C4 validation blocks {path} are damaged ({{}}); delete that file (it is rebuilt from "
               f"the data) and rerun.")
    try:
        saved = torch.load(path, weights_only=True)
        blocks = saved["blocks"]
    except Exception as exc:  # unreadable, truncated, not a torch file
        raise UserError(damaged.format(_first_line(exc))) from None
    if saved.get("key") != key or saved.get("sha256") != _blocks_checksum(blocks):
        raise UserError(damaged.format("their checksum does not match their content"))
    return blocks.long()
