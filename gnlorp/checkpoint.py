"""Checkpoints that cannot lie: a SHA-256 written at save, verified before any byte is unpickled.

`<path>` holds torch.save's bytes; `<path>.sha256` (the sidecar) holds the digest in sha256sum's format
(`<hex>  <name>`), so `sha256sum -c last.pt.sha256` checks a checkpoint by hand.

Why a crash at any point leaves a pair that verifies. Both files are only ever replaced whole (a temporary
file in the same folder, fsynced, then os.replace, which is atomic), in this order:
  1. the new payload is written to `<path>.tmp-<pid>` and fsynced, its digest computed while writing;
  2. the sidecar is replaced by one listing the new digest AND the digest(s) the old sidecar listed;
  3. the payload is os.replace'd onto `<path>`;
  4. the sidecar is replaced by one listing the new digest only.
A load accepts a payload whose digest is listed in the sidecar. Before 2 the old pair is untouched;
between 2 and 4 the sidecar lists both the old and the new payload's digest, whichever one `<path>` holds;
after 4 the new pair stands alone. A payload changed by even one bit matches neither digest.

A failed save (disk full, quota, read-only or unwritable folder) removes its temporary files, leaves the
previous pair as it was, and raises CheckpointSaveError (one line: the path, the cause, the fix). A load that
finds the payload changed, the sidecar missing or garbled, or the file unreadable raises UserError and never
deletes anything.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .errors import UserError, os_error_cause
from .record import fsync_dir

_CHUNK = 8 << 20  # bytes hashed per read
_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")


class CheckpointSaveError(UserError):
    """A checkpoint could not be written; the previous one (if any) is intact."""


def sidecar_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


class _HashingWriter:
    """A write-only file wrapper that hashes the bytes torch.save writes through it (no second read)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass  # nothing more can be done; the error that matters is already propagating


def _replace_sidecar(path: Path, digests: list[str]) -> None:
    sidecar = sidecar_path(path)
    tmp = sidecar.with_name(f"{sidecar.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write("".join(f"{d}  {path.name}\n" for d in digests))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, sidecar)
    finally:
        _remove(tmp)


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _listed_digests(path: Path) -> list[str] | None:
    """The digests the sidecar lists for `path`, or None if it is missing, unreadable or garbled."""
    try:
        lines = sidecar_path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    matches = [_LINE.match(line) for line in lines]
    if not lines or not all(m and m.group(2) == path.name for m in matches):
        return None
    return [m.group(1) for m in matches]


def _os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc`: torch.save reports a failed write of its file object as a RuntimeError
    whose context is the OSError (ENOSPC, EDQUOT, ...)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save `state` to `path` with its checksum sidecar (module docstring: the crash-safe order)."""
    import torch

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            # a file object, not a path: a failed write then carries its OSError (ENOSPC, ...) where torch's
            # own file writer raises a bare RuntimeError
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        new = writer.sha.hexdigest()
        # the digests that may describe the payload now at `path` (not re-hashed: a damaged one stays refused)
        old = (_listed_digests(path) or []) if path.exists() else []
        _replace_sidecar(path, [new] + [d for d in old if d != new])
        os.replace(tmp, path)
        fsync_dir(path.parent)
        _replace_sidecar(path, [new])
    except Exception as exc:
        os_error = _os_error_in(exc)
        if os_error is None:
            raise
        cause, fix = os_error_cause(os_error, "checkpoint_dir")
        raise CheckpointSaveError(
            f"could not save checkpoint {path}: {cause}; any previous checkpoint there is kept; {fix}."
        ) from None
    finally:
        _remove(tmp)


def _damaged(path: Path, why: str) -> UserError:
    return UserError(f"checkpoint {path} is damaged ({why}): it was kept; delete it to start over or restore it.")


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    """The state saved by save_checkpoint, after checking its SHA-256 against the sidecar."""
    import torch

    path = Path(path)
    digests = _listed_digests(path)
    if digests is None:
        state = "missing" if not sidecar_path(path).exists() else "unreadable or garbled"
        raise _damaged(path, f"its checksum file {sidecar_path(path).name} is {state}")
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise _damaged(path, f"cannot be read: {os_error_cause(exc, 'checkpoint_dir')[0]}") from None
    if actual not in digests:
        raise _damaged(path, "checksum mismatch")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # the bytes are the ones saved, so this is a version or environment problem
        raise UserError(f"checkpoint {path} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                        "it was kept; delete it to start over.") from None
