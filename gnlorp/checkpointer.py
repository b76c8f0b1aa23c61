"""The checkpointer: one owner for a run's checkpoint folder (torchtitan's components/checkpoint.py shape).

It keeps the identity file beside each checkpoint (which training settings wrote it), refuses a checkpoint of
other settings, loads a checkpoint only once verified, saves it atomically and removes it once the result is
written. The backends: gnlorp/checkpoint.py (one process: one file and its SHA-256 sidecar) and
gnlorp/sharded_checkpoint.py (FSDP: a DCP folder). What is saved comes from the components' own state_dict
(the loop, which carries the tracker's and the data stream's state), and goes back through their load_state_dict.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import identity
from .data_fingerprint import describe_change
from .errors import UserError

IDENTITY_FILE = "identity.json"  # beside each checkpoint: which training settings wrote it
CHECKPOINT_FILE, SHARDED_FOLDER = "last.pt", "last.dcp"
_SLOT_KEYS = ("task.name", "task.max_train_samples", "model.name", "seed")


def checkpoint_path(checkpoint_dir: str | Path, run_id: str, sharded: bool) -> Path:
    """<checkpoint_dir>/<run_id>/last.pt, or the DCP folder last.dcp when sharded (gnlorp/sharded_checkpoint.py)."""
    return Path(checkpoint_dir) / run_id / (SHARDED_FOLDER if sharded else CHECKPOINT_FILE)


def _read_identity(folder: Path) -> dict | None:
    try:
        return json.loads((folder / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _same_slot(mine: dict, theirs: dict) -> bool:
    """Checkpoints of the same experiment slot (task, data subset, model, seed), whatever the method."""
    return all(mine.get(k) == theirs.get(k) for k in _SLOT_KEYS)


def _other_settings(path: Path, mine: dict, theirs: dict) -> UserError:
    keys = identity.differing_keys(mine, theirs)
    return UserError(f"resume=true, but {path} holds a run with other training settings "
                     f"({identity.describe_differences(mine, theirs, keys)}); it was kept.")


@dataclass(frozen=True)
class Checkpointer:
    """The checkpoint of one run: `path` is last.pt (one process) or last.dcp (sharded), in <checkpoint_dir>/<run_id>/."""

    path: Path
    run_id: str
    settings: dict = field(hash=False)
    data: dict = field(default_factory=dict, hash=False)  # the data's fingerprint (gnlorp/data_fingerprint.py)
    rank: int = 0
    sharded: bool = False
    multirun: bool = False

    @property
    def folder(self) -> Path:
        return self.path.parent

    # ------------------------------------------------------------------ refusal
    def check_resume(self, resume: bool, echo: Callable) -> bool:
        """resume=true: whether this config's checkpoint exists (light: reads identity files, not checkpoints)."""
        if not resume:
            return False
        if not self.path.exists():
            self.refuse_other_configs(echo if self.rank == 0 else (lambda *_: None))
            return False
        theirs = (_read_identity(self.folder) or {}).get("settings")
        if theirs is not None and theirs != self.settings:
            raise _other_settings(self.path, self.settings, theirs)
        return True

    def refuse_other_configs(self, echo: Callable) -> None:
        """resume=true found no checkpoint of this config: if one of another config of the same slot exists, the
        user most likely changed a setting by mistake; say which, and keep that checkpoint. In a multirun the
        other points of the sweep are such configs, so there a fresh start is the right answer."""
        root = self.folder.parent
        candidates = []
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            theirs = _read_identity(folder) if (folder / CHECKPOINT_FILE).exists() and folder.name != self.run_id else None
            if theirs and _same_slot(self.settings, theirs["settings"]):
                keys = identity.differing_keys(self.settings, theirs["settings"])
                candidates.append((len(keys), folder, keys, theirs))
        if not candidates:
            echo(f"resume=true but no checkpoint at {self.path}: starting from scratch.")
            return
        _, folder, keys, theirs = min(candidates, key=lambda c: c[0])
        if self.multirun:
            echo(f"resume=true: no checkpoint of this sweep point; starting it from scratch ({folder} is another point's).")
            return
        if keys == ["data"]:
            raise UserError(
                f"resume=true, but the checkpoint {folder / CHECKPOINT_FILE} was trained on other data: in task.data_dir "
                f"{describe_change(self.data, theirs.get('data'))}; it was kept: point task.data_dir at the data it "
                f"was trained on to continue it, or drop resume=true to start on this data from scratch.")
        raise UserError(
            f"resume=true, but the checkpoint {folder / CHECKPOINT_FILE} was written with other training settings "
            f"({identity.describe_differences(self.settings, theirs['settings'], keys)}); it was kept: rerun with its "
            f"settings to continue it, or drop resume=true to start this config from scratch.")

    # ------------------------------------------------------------------ verified load
    def load(self, device, model=None) -> dict:
        """The checkpoint's state, verified (checksum, then the settings that wrote it); sharded, the model's shards
        are loaded in place and this rank's state is returned."""
        from .checkpoint import load_checkpoint

        if self.sharded:
            from .sharded_checkpoint import load_sharded

            state = load_sharded(self.path, model)
        else:
            state = load_checkpoint(self.path, device)
        theirs = state.get("extra", {}).get("identity", {}).get("settings")
        if theirs != self.settings:
            raise _other_settings(self.path, self.settings, theirs or {})
        return state

    def restore(self, state: dict, loop, tracker) -> None:
        """Hand a loaded state back to its owners (each a Stateful: load_state_dict)."""
        loop.load_state_dict(state)
        tracker.load_state_dict(state["extra"])

    # ------------------------------------------------------------------ atomic save
    def save(self, loop) -> None:
        """The loop's state (a Stateful: state_dict, carrying the tracker's and the data stream's) saved atomically;
        sharded, every rank writes its shards of loop.model and its own state, else rank 0 writes the file while
        the others wait. Collective: all processes call it."""
        if self.sharded:
            from .sharded_checkpoint import save_sharded

            save_sharded(self.path, loop.model, loop.state_dict())
            return
        from .checkpoint import save_checkpoint
        from .distributed import wait_for_rank0

        if self.rank == 0:
            save_checkpoint(loop.state_dict(), self.path)
        wait_for_rank0()

    def size_bytes(self) -> int | None:
        """Bytes of the checkpoint on disk (every file of a DCP folder); None if none is there."""
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size if self.path.is_file() else None

    def stamp(self) -> dict:
        """What each saved state carries so that a load can verify it (the loop saves it under extra.identity)."""
        return {"run_id": self.run_id, "settings": self.settings}

    def write_identity(self) -> None:
        if self.rank != 0:
            return
        from .record import atomic_write_json

        atomic_write_json(self.folder / IDENTITY_FILE, {"run_id": self.run_id, "settings": self.settings,
                                                        "data": self.data})

    # ------------------------------------------------------------------ removal
    def remove(self) -> None:
        """Only once the result is safely written; sweeps would pile up GBs of checkpoints."""
        from .checkpoint import sidecar_path

        if self.path.is_dir():  # a DCP folder
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
        for leftover in (self.path, sidecar_path(self.path), self.folder / IDENTITY_FILE):
            leftover.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # something else lives there (a sidecar of a newer checkpoint format, a user's file): keep it
