"""Checkpoints that cannot lie (gnlorp/checkpoint.py): a checksum written at save and verified at load; a
failed or interrupted save keeps the previous pair loadable; a damaged file is refused in one line and kept."""

import errno
import hashlib
import struct

import pytest
import torch

from gnlorp import checkpoint as ck
from gnlorp.checkpoint import CheckpointSaveError, load_checkpoint, save_checkpoint, sidecar_path
from gnlorp.errors import UserError


def _state(fill: float) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"model": {"w": torch.full((64, 64), fill), "b": torch.randn(64, generator=g)},
            "position": {"step": int(fill)}, "rng": torch.get_rng_state()}


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_round_trip_and_sidecar_is_sha256sum_format(tmp_path):
    path = tmp_path / "run" / "last.pt"  # the folder is created
    state = _state(1.0)
    save_checkpoint(state, path)
    assert _equal(load_checkpoint(path), state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar_path(path).read_text() == f"{digest}  last.pt\n"
    save_checkpoint(_state(2.0), path)  # a second save replaces both files
    assert _equal(load_checkpoint(path), _state(2.0))
    assert sidecar_path(path).read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  last.pt\n"
    assert _leftovers(path.parent) == []


def test_four_floats_overwritten_are_refused_and_the_file_is_kept(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    raw = bytearray(path.read_bytes())
    at = raw.index(struct.pack("<4f", 1.0, 1.0, 1.0, 1.0), len(raw) // 3)  # inside the 64x64 tensor of ones
    raw[at:at + 16] = struct.pack("<4f", 1.5, 1.5, 1.5, 1.5)
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg == (f"checkpoint {path} is damaged (checksum mismatch): it was kept; "
                   "delete it to start over or restore it.")
    assert "\n" not in msg
    assert path.read_bytes() == bytes(raw)  # kept, unchanged
    # torch alone would have accepted it: the check is what catches it
    assert torch.load(path, weights_only=True)["model"]["w"].sum().item() == 64 * 64 + 4 * 0.5


@pytest.mark.parametrize("sidecar", ["missing", "garbled", "other file"])
def test_a_missing_or_garbled_sidecar_is_refused(tmp_path, sidecar):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if sidecar == "missing":
        sidecar_path(path).unlink()
    elif sidecar == "garbled":
        sidecar_path(path).write_bytes(b"\x00\xffnot a digest")
    else:
        sidecar_path(path).write_text(f"{digest}  other.pt\n")
    with pytest.raises(UserError, match=r"^checkpoint .*last\.pt is damaged \(its checksum file last\.pt\.sha256 "
                                        r"is (missing|unreadable or garbled)\): it was kept"):
        load_checkpoint(path)
    assert path.exists()


def test_an_unreadable_checkpoint_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(ck, "file_sha256", refuse)
    with pytest.raises(UserError, match=r"is damaged \(cannot be read: permission denied\): it was kept"):
        load_checkpoint(path)


def test_disk_full_during_save_keeps_previous_checkpoint_and_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    before = (path.read_bytes(), sidecar_path(path).read_bytes())
    real_write = ck._HashingWriter.write
    written = []

    def fills_up(self, data):  # the disk fills after the first few writes: a partial temporary file exists
        if len(written) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        return real_write(self, data)

    monkeypatch.setattr(ck._HashingWriter, "write", fills_up)
    with pytest.raises(CheckpointSaveError) as info:
        save_checkpoint(_state(2.0), path)
    msg = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in msg
    assert str(path) in msg and "no space left on device" in msg and "free disk space" in msg
    assert _leftovers(tmp_path) == []
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == before
    monkeypatch.undo()
    assert _equal(load_checkpoint(path), _state(1.0))


def test_quota_while_writing_the_sidecar_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)

    def quota(path_, digests):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(ck, "_replace_sidecar", quota)
    with pytest.raises(CheckpointSaveError, match="disk quota exceeded"):
        save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert _leftovers(tmp_path) == []
    assert _equal(load_checkpoint(path), _state(1.0))


def test_read_only_folder_is_one_line(tmp_path, monkeypatch):
    # as root chmod does not stop writes, so the refusal the file system would give is simulated
    path = tmp_path / "last.pt"

    def read_only(file, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(file))

    monkeypatch.setattr(ck, "open", read_only, raising=False)
    with pytest.raises(CheckpointSaveError) as info:
        save_checkpoint(_state(1.0), path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "read-only file system" in msg and "writable" in msg
    assert not path.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("crash_at", ["payload replace", "final sidecar"])
def test_a_crash_between_the_two_replaces_leaves_a_pair_that_verifies(tmp_path, monkeypatch, crash_at):
    """A crash (no handler runs) after the transitional sidecar: the old payload (crash before its replace)
    or the new one (crash before the sidecar is narrowed to it) loads, and a damaged one still does not."""
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    real_replace, real_sidecar = ck.os.replace, ck._replace_sidecar
    calls = []

    class Crash(BaseException):
        pass

    def replace(src, dst):
        if crash_at == "payload replace" and str(dst) == str(path):
            raise Crash
        return real_replace(src, dst)

    def sidecar(p, digests):
        calls.append(list(digests))
        if crash_at == "final sidecar" and len(calls) == 2:
            raise Crash
        return real_sidecar(p, digests)

    monkeypatch.setattr(ck.os, "replace", replace)
    monkeypatch.setattr(ck, "_replace_sidecar", sidecar)
    with pytest.raises(Crash):
        save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert len(sidecar_path(path).read_text().splitlines()) == 2  # the transitional sidecar: new and old digest
    expected = _state(1.0) if crash_at == "payload replace" else _state(2.0)
    assert _equal(load_checkpoint(path), expected)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_checkpoint(path)
