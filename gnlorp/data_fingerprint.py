"""What data a run reads, as a digest that joins its identity (gnlorp/identity.py).

Local data: every file the task reads (GLUE: the task's train and evaluation TSVs; C4: the train and validation
shards), by its name relative to the data folder, its size and a SHA-256 of its content (the whole file up to
WHOLE_FILE_BYTES, else of SLICES fixed slices and the size). The hub: the data set's id, config and revision.
So another corpus, a shard removed, or one training label changed gives another digest, whatever folder the
data sits in, while the same files moved to another folder or machine keep theirs.

The results committed before the data was part of the identity were trained on the shared data
(../shared/data): its digests are listed in REFERENCE, and data with one of them stays out of the hash, so
those results keep their identity (the data is recorded in every result all the same). Which files a task reads
is the tasks' business: gnlorp/tasks/fingerprint.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import UserError

WHOLE_FILE_BYTES = 64 << 20
SLICE_BYTES = 64 << 10
SLICES = 3  # start, middle, end
DIGEST_FORMAT = 1  # of the cached digests (file_digest)
HUB_REVISION = "main"  # the revision the hub loaders ask for (their default)

# digest -> the data it stands for: the shared data the committed results were trained on (see the docstring);
# `python -m gnlorp.tasks.fingerprint ../shared/data` prints them; tests/unit/test_data_fingerprint.py checks them.
REFERENCE = {
    "db6ff0e788d14482": "glue_data cola",
    "f5b71e4b57dcd186": "glue_data cola (evaluation only)",
    "c9f463593b3a692c": "glue_data sst2",
    "8939bf240e3f4404": "glue_data sst2 (evaluation only)",
    "2bbbbbc1157ec090": "glue_data mrpc",
    "bd63e4638a203bc2": "glue_data mrpc (evaluation only)",
    "5d36c20fe1fd3023": "glue_data stsb",
    "b0fc79e26a63e376": "glue_data stsb (evaluation only)",
    "7dab7f5d2b0fa7dd": "glue_data qnli (evaluation only)",
    "c1047330dfe5ec50": "glue_data rte",
    "55f582992639cc72": "glue_data rte (evaluation only)",
    "6717167bd3c45e51": "glue_data wnli",
    "a0d72a2d28f80634": "glue_data wnli (evaluation only)",
    "4854ae926986789c": "c4/en",
}


def cache_root() -> Path:
    """gnlorp's cache folder: $GNLORP_CACHE_DIR, else $XDG_CACHE_HOME/gnlorp, else ~/.cache/gnlorp."""
    if os.environ.get("GNLORP_CACHE_DIR"):
        return Path(os.environ["GNLORP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gnlorp"


def file_digest(path: Path) -> str:
    """The file's digest, kept in the cache under its path, size, modification time and inode (as git's index
    does), so a large corpus is read once: a run's start-up does not grow with the corpus."""
    st = path.stat()
    key = f"{DIGEST_FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    kept = cache_root() / "file-digests" / hashlib.sha256(key.encode()).hexdigest()[:32]
    try:
        text = kept.read_text().strip()
        if len(text) == 16 and all(c in "0123456789abcdef" for c in text):
            return text
    except OSError:
        pass
    digest = _content_digest(path, st.st_size)
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(f"{kept.name}.tmp-{os.getpid()}")
        tmp.write_text(digest)
        os.replace(tmp, kept)
    except OSError:
        pass  # a read-only cache: computed again next time
    return digest


def _content_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            for k in range(SLICES):
                f.seek((size - SLICE_BYTES) * k // (SLICES - 1))
                h.update(f.read(SLICE_BYTES))
    return h.hexdigest()[:16]


def local_fingerprint(root: str | Path, files: list[Path]) -> dict:
    root = Path(root)
    out = []
    for path in files:
        try:
            out.append([path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name,
                        path.stat().st_size, file_digest(path)])
        except OSError as exc:
            raise UserError(f"cannot read {path} ({exc.strerror or exc}); make the data under task.data_dir "
                            f"readable, or point task.data_dir at a readable copy.") from None
    return {"files": out}


def hub_fingerprint(dataset: str, config: str) -> dict:
    return {"hub": dataset, "config": config, "revision": HUB_REVISION}


def digest(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def describe_change(mine: dict, theirs: dict | None) -> str:
    """What differs between two fingerprints, in a few words (for a refused resume)."""
    if not theirs:
        return "the data differs from the data it was trained on"
    if "files" not in mine or "files" not in theirs:
        return f"the data source changed ({_source(theirs)} -> {_source(mine)})"
    a = {name: (size, h) for name, size, h in theirs["files"]}
    b = {name: (size, h) for name, size, h in mine["files"]}
    parts = [f"{n} missing" for n in sorted(set(a) - set(b))] + [f"{n} added" for n in sorted(set(b) - set(a))]
    parts += [f"{n} changed" for n in sorted(set(a) & set(b)) if a[n] != b[n]]
    shown = ", ".join(parts[:4]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")
    return f"the data files differ ({shown or 'same files, other order'})"


def _source(fp: dict) -> str:
    return f"{fp['hub']} on the hub" if "hub" in fp else f"{len(fp.get('files', []))} local files"
