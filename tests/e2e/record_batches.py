"""Run the runner on Hydra overrides (argv[2:]) and save, per process, the token ids of every batch it trained on
and the (shard, line) of every document its streams read, to <argv[1]>/rank<r>.pt. Used by test_c4_stream.py, in
process or under torchrun."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest


def run_recording(args: list[str], out_dir: str):
    from conftest import compose

    import gnlorp.tasks.c4_stream as cs
    from gnlorp.runner import run

    batches, docs = [], []
    next_batch, iter_docs = cs.StreamBatches.next_batch, cs.iter_file_docs

    def recording_next_batch(self):
        out = next_batch(self)
        batches.append(self._blocks.clone())
        return out

    def recording_iter_docs(path, *a, **k):
        for index, text in iter_docs(path, *a, **k):
            docs.append((Path(path).name, index))
            yield index, text

    cs.StreamBatches.next_batch, cs.iter_file_docs = recording_next_batch, recording_iter_docs
    try:
        outcome = run(compose(args), echo=lambda *a: None)
    finally:
        cs.StreamBatches.next_batch, cs.iter_file_docs = next_batch, iter_docs
    rank = int(os.environ.get("RANK", "0"))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    torch.save({"batches": batches, "docs": docs, "status": outcome.status}, Path(out_dir) / f"rank{rank}.pt")
    return outcome


if __name__ == "__main__":
    run_recording(sys.argv[2:], sys.argv[1])
