"""C4 training data as endless, sharded, resumable streams of packed blocks.

A fixed number S of logical streams (task.streams) read disjoint documents: whole local shards round-robin when
there are at least S of them, else every S-th line of each shard (stream s: lines i with i % S == s); from the
hub, `split_dataset_by_node(rank=s, world_size=S)` of the streaming dataset. Each stream tokenizes its documents
in batches, appends EOS to each, packs the ids into seq_len blocks and shuffles the blocks through its own bounded
buffer (task.shuffle_blocks; the pick is a hash of seed, stream and counter); at the end of its documents it
starts the next pass. Global step t's batch of B blocks is stream 0's next B/S blocks, then stream 1's, and so on.
With W processes, rank r owns streams [r*S/W, (r+1)*S/W), whose blocks are exactly its contiguous share of the
global batch, so 1 and W processes train on the same global batches (B % S == 0 and S % W == 0).

A stream's state (pass, shard, line or hub position, packing leftover, shuffle buffer, counter) is all a resume
needs: the shard is reopened at that line without tokenizing the lines before it. A background thread produces
batches ahead of the trainer; every batch carries its streams' state right after it, and `state_dict` is the
state after the last batch the trainer took, never the read-ahead.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from gnlorp.errors import UserError

from .c4 import HUB_ID, _first_line, iter_file_docs

_BATCH_DOCS = 32            # documents per tokenizer call (the blocks do not depend on it)
_PREFETCH = 4               # global batches produced ahead of the trainer
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finalizer: a well-spread 64-bit hash of x."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class LocalDocs:
    """The documents of stream `stream` of `num_streams` in local shards, endlessly, from `position`
    ({"pass", "file", "line"}: the next line to read), which is kept up to date as documents are taken."""

    def __init__(self, files: list[Path], stream: int, num_streams: int):
        if len(files) >= num_streams:
            self.files, self.stride, self.offset = files[stream::num_streams], 1, 0
        else:
            self.files, self.stride, self.offset = list(files), num_streams, stream
        self.position = {"pass": 0, "file": 0, "line": 0}

    def __iter__(self) -> Iterator[str]:
        pos = self.position
        found = pos["line"] > 0 or pos["file"] > 0  # a pass started from its beginning must find a document
        while True:
            while pos["file"] < len(self.files):
                for index, text in iter_file_docs(self.files[pos["file"]], pos["line"], self.stride, self.offset):
                    pos["line"] = index + 1
                    found = True
                    yield text
                pos["file"], pos["line"] = pos["file"] + 1, 0
            if not found:
                raise UserError(f"C4 stream {self.offset} of {self.stride} found no document in "
                                f"{', '.join(str(f) for f in self.files)}; use more documents or a smaller task.streams.")
            pos["pass"], pos["file"], found = pos["pass"] + 1, 0, False


class HubDocs:
    """The documents of stream `stream` of `num_streams` of a streaming `datasets` dataset (allenai/c4 by
    default), endlessly; `position` holds the pass and the dataset's own state_dict (shard and offset)."""

    def __init__(self, stream: int, num_streams: int, split: str = "train", load: Callable | None = None):
        self.stream, self.num_streams, self.split = stream, num_streams, split
        self.load = load or (lambda: __import__("datasets").load_dataset(*HUB_ID, split=split, streaming=True))
        self.position = {"pass": 0, "hub": None}

    def _hint(self) -> str:
        return (f"to read local shards instead, set task.data_dir (or $GNLORP_C4_DIR) to a folder of "
                f"c4-{self.split}.*.json.gz files, e.g. ../shared/data/c4/en")

    def __iter__(self) -> Iterator[str]:
        try:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(self.load(), rank=self.stream, world_size=self.num_streams)
        except Exception as exc:  # offline, no network, missing auth ...: fixable by pointing at local data
            raise UserError(f"could not stream {HUB_ID[0]} ({HUB_ID[1]}, {self.split}) from the Hugging Face hub "
                            f"({_first_line(exc)}); {self._hint()}.") from None
        pos = self.position
        start = ds.state_dict()  # a loaded state stays with the dataset: each pass starts from this one
        while True:
            ds.load_state_dict(pos["hub"] if pos["hub"] is not None else start)
            found = False
            iterator = iter(ds)
            while True:
                try:
                    record = next(iterator)
                except StopIteration:
                    break
                except Exception as exc:
                    raise UserError(f"streaming {HUB_ID[0]} ({self.split}) from the hub failed ({_first_line(exc)}); "
                                    f"{self._hint()}.") from None
                pos["hub"] = ds.state_dict()
                found = True
                yield record["text"]
            if not found and pos["hub"] is None:
                raise UserError(f"C4 stream {self.stream} of {self.num_streams} from the hub found no document; "
                                f"use a smaller task.streams.")
            pos["pass"], pos["hub"] = pos["pass"] + 1, None


class BlockStream:
    """One logical stream: documents -> ids + EOS -> seq_len blocks -> bounded shuffle, with an exact state."""

    def __init__(self, docs, tokenizer, seq_len: int, buffer_blocks: int, *, seed: int, index: int):
        self.docs, self.tokenizer, self.seq_len = docs, tokenizer, seq_len
        self.eos = tokenizer.eos_token_id
        self.key = _mix(seed * 1_000_003 + index)
        self.buffer = np.empty((buffer_blocks, seq_len), dtype=np.int32)
        self.size = 0            # blocks held in the buffer
        self.emitted = 0         # blocks given out
        self.documents = 0       # documents tokenized
        self.pending = np.empty(0, dtype=np.int32)  # ids not yet cut into a block
        self._iter: Iterator[str] | None = None

    def _refill(self) -> None:
        if self._iter is None:
            self._iter = iter(self.docs)
        texts: list[str] = []
        while len(texts) < _BATCH_DOCS:
            text = next(self._iter)
            if text:  # an empty document would add a lone EOS
                texts.append(text)
        parts = [self.pending]
        eos = np.array([self.eos], dtype=np.int32)
        for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]:
            parts += [np.asarray(ids, dtype=np.int32), eos]
        self.pending = np.concatenate(parts)
        self.documents += len(texts)

    def _next_packed(self) -> np.ndarray:
        while self.pending.size < self.seq_len:
            self._refill()
        block, self.pending = self.pending[:self.seq_len], self.pending[self.seq_len:]
        return block

    def next(self) -> np.ndarray:
        """The next block: a pseudo-random pick from the buffer, which grows by one block per pick until full."""
        want = min(len(self.buffer), self.emitted + 2)
        while self.size < want:
            self.buffer[self.size] = self._next_packed()
            self.size += 1
        j = _mix((self.key + self.emitted) & _MASK) % self.size
        out = self.buffer[j].copy()
        self.size -= 1
        self.buffer[j] = self.buffer[self.size]
        self.emitted += 1
        return out

    def state(self) -> dict:
        return {"position": copy.deepcopy(self.docs.position), "pending": torch.from_numpy(self.pending.copy()),
                "buffer": torch.from_numpy(self.buffer[:self.size].copy()), "emitted": self.emitted,
                "documents": self.documents}

    def load(self, state: dict) -> None:
        buffer = state["buffer"].cpu().numpy()
        if buffer.shape[0] > len(self.buffer) or buffer.shape[1:] != (self.seq_len,):
            raise UserError(f"the checkpoint's C4 shuffle buffer holds {tuple(buffer.shape)} blocks, which does not fit "
                            f"task.shuffle_blocks={len(self.buffer)}, task.seq_len={self.seq_len}; resume with the "
                            f"values of the interrupted run.")
        self.docs.position = copy.deepcopy(state["position"])
        self.pending = state["pending"].cpu().numpy().astype(np.int32)
        self.size = buffer.shape[0]
        self.buffer[:self.size] = buffer
        self.emitted, self.documents = int(state["emitted"]), int(state["documents"])
        self._iter = None


class StreamBatches:
    """This process's share of every global batch, produced in the background; the training loop's data stream.

    next_batch() -> the positions [0, batch_size) of the next global batch (the loop slices this rank's
    contiguous share and asks collate for it); state_dict() covers this rank's streams and merges with the
    other ranks' by dict union; load_state_dict takes a merged one."""

    def __init__(self, make_stream: Callable[[int], BlockStream], num_streams: int, batch_size: int, seq_len: int,
                 *, world_size: int = 1, rank: int = 0):
        if not isinstance(num_streams, int) or num_streams <= 0 or batch_size % num_streams:
            raise UserError(f"task.streams={num_streams!r} must be a positive integer dividing train.batch_size="
                            f"{batch_size} (each step takes the same number of blocks from every stream); e.g. "
                            f"task.streams={_divisor(batch_size, world_size)}.")
        if num_streams % world_size:
            raise UserError(f"task.streams={num_streams} must be a multiple of the {world_size} processes (each owns "
                            f"whole streams); e.g. task.streams={_divisor(batch_size, world_size)}.")
        self.make_stream, self.num_streams, self.batch_size, self.seq_len = make_stream, num_streams, batch_size, seq_len
        self.world_size, self.rank = world_size, rank
        per_rank = num_streams // world_size
        self.owned = list(range(rank * per_rank, (rank + 1) * per_rank))
        self.per_stream = batch_size // num_streams
        self.share = batch_size // world_size
        self._state: dict = {f"stream{s}": None for s in self.owned}
        self._blocks: torch.Tensor | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self.wait_seconds = 0.0

    # ------------------------------------------------------------------ producer
    def _produce(self, q: queue.Queue, stop: threading.Event, state: dict) -> None:
        def put(item) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    pass

        try:
            streams = []
            for s in self.owned:
                stream = self.make_stream(s)
                if state[f"stream{s}"] is not None:
                    stream.load(state[f"stream{s}"])
                streams.append(stream)
            while not stop.is_set():
                blocks = np.empty((self.share, self.seq_len), dtype=np.int32)
                for k, stream in enumerate(streams):
                    for i in range(self.per_stream):
                        blocks[k * self.per_stream + i] = stream.next()
                put((torch.from_numpy(blocks), {f"stream{s}": st.state() for s, st in zip(self.owned, streams)}))
        except BaseException as exc:  # handed to the trainer, which raises it
            put(exc)

    def _start(self) -> None:
        self._queue, self._stop = queue.Queue(maxsize=_PREFETCH), threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop, dict(self._state)),
                                        name="c4-stream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the producer; a later next_batch restarts it from the state of the last batch taken."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
        self._thread = self._queue = self._stop = None

    # ------------------------------------------------------------------ the loop's interface
    def next_batch(self) -> list[int]:
        if self._thread is None:
            self._start()
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._blocks, snapshot = item
        self._state.update(snapshot)
        return list(range(self.batch_size))

    def collate(self, indices: list[int]) -> dict:
        rows = [i - self.rank * self.share for i in indices]
        if not all(0 <= r < self.share for r in rows):
            raise IndexError(f"positions {indices} are not all in rank {self.rank}'s share of the batch")
        ids = self._blocks[rows].long()
        return {"input_ids": ids, "labels": ids}

    def state_dict(self) -> dict:
        return {"meta": {"streams": self.num_streams, "seq_len": self.seq_len}, **self._state}

    def load_state_dict(self, state: dict) -> None:
        meta = state.get("meta", {})
        if meta != {"streams": self.num_streams, "seq_len": self.seq_len}:
            raise UserError(f"the checkpoint's C4 data position is for task.streams={meta.get('streams')}, "
                            f"task.seq_len={meta.get('seq_len')}; resume with those values (this run has "
                            f"{self.num_streams} and {self.seq_len}).")
        self.close()
        for s in self.owned:
            self._state[f"stream{s}"] = state[f"stream{s}"]

    def check(self) -> None:
        """Read the first document of each of this rank's streams now, so that an unreadable shard or an offline
        hub is reported before training starts (the producer thread would report it only at the first step)."""
        for s in self.owned:
            next(iter(self.make_stream(s).docs))

    def stats(self) -> dict:
        """This rank's totals; merge_stats combines those of all ranks."""
        states = [st for st in self._state.values() if st is not None]
        return {"data_passes": 1 + max((st["position"]["pass"] for st in states), default=0),
                "data_documents": sum(st["documents"] for st in states),
                "data_wait_seconds": round(self.wait_seconds, 3)}

    @staticmethod
    def merge_stats(parts: list[dict]) -> dict:
        """data_passes: passes begun by the stream furthest along (1: every stream is in its first pass);
        data_documents: documents tokenized, read-ahead of the shuffle buffers included; data_wait_seconds: the
        longest time a process waited for a batch."""
        return {"data_passes": max(p["data_passes"] for p in parts),
                "data_documents": sum(p["data_documents"] for p in parts),
                "data_wait_seconds": max(p["data_wait_seconds"] for p in parts)}


def _divisor(batch_size: int, world_size: int) -> int:
    """The largest number of streams <= 8 that divides the batch and is a multiple of the processes."""
    fits = [s for s in range(world_size, 9, world_size) if batch_size % s == 0]
    return fits[-1] if fits else world_size


def c4_train_stream(tokenizer, data_dir: str | None, seq_len: int, batch_size: int, *, num_streams: int,
                    buffer_blocks: int, seed: int, world_size: int = 1, rank: int = 0) -> StreamBatches:
    """The C4 train split as StreamBatches, from local shards (data_dir) or the hub (None)."""
    from .c4 import c4_files

    if not isinstance(seq_len, int) or seq_len <= 0:
        raise UserError(f"task.seq_len={seq_len!r} must be a positive integer (the paper uses 256).")
    if not isinstance(buffer_blocks, int) or buffer_blocks <= 0:
        raise UserError(f"task.shuffle_blocks={buffer_blocks!r} must be a positive integer (1: no shuffling).")
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise UserError("the tokenizer has no EOS token, which C4 packing puts between documents; "
                        "use model.tokenizer=t5-base or model.tokenizer=mistral-sp.")
    files = c4_files(data_dir, "train") if data_dir is not None else None
    # the producer thread gets its own tokenizer: a fast tokenizer shared across threads can fail ("Already borrowed")
    own = copy.deepcopy(tokenizer)

    def make(s: int) -> BlockStream:
        docs = LocalDocs(files, s, num_streams) if files is not None else HubDocs(s, num_streams)
        return BlockStream(docs, own, seq_len, buffer_blocks, seed=seed, index=s)

    return StreamBatches(make, num_streams, batch_size, seq_len, world_size=world_size, rank=rank)
