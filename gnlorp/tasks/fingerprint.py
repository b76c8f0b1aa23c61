"""The fingerprint of the data a run reads (gnlorp/data_fingerprint.py), from the task's own list of files."""

from __future__ import annotations

import os
from pathlib import Path

from ..data_fingerprint import digest, hub_fingerprint, local_fingerprint
from ..errors import UserError


def task_fingerprint(task) -> dict:
    """The fingerprint of the data a run of `task` (the config's task node) reads; the folders are checked."""
    if task.family == "glue":
        from .glue import HUB_DATASET, check_glue_files, glue_task_files, resolve_glue_dir

        root = resolve_glue_dir(task.data_dir)
        if root is None:
            check_glue_files(task.name, None)  # offline with no copy of the hub's GLUE: fail now
            return hub_fingerprint(HUB_DATASET, str(task.name))
        return local_fingerprint(root, glue_task_files(task.name, root, train=task.max_train_samples != 0))
    from .c4 import HUB_ID, c4_files, resolve_c4_dir

    root = resolve_c4_dir(task.data_dir)
    if root is None:
        return hub_fingerprint(HUB_ID[0], HUB_ID[1])
    return local_fingerprint(root, [*c4_files(root, "train"), *c4_files(root, "validation")])


def reference_digests(shared_data: str | os.PathLike) -> dict[str, str]:
    """{digest: what} of every task of the shared data folder (how REFERENCE was made)."""
    from types import SimpleNamespace

    from .glue import GLUE_TASKS

    out = {}
    for name in GLUE_TASKS:
        for train in (True, False):
            task = SimpleNamespace(family="glue", name=name, data_dir=str(Path(shared_data) / "glue_data"),
                                   max_train_samples=None if train else 0)
            try:
                out[digest(task_fingerprint(task))] = f"glue_data {name}" + ("" if train else " (evaluation only)")
            except UserError:
                pass  # a task (or its train split) the shared data does not hold
    task = SimpleNamespace(family="c4", name="c4", data_dir=str(Path(shared_data) / "c4" / "en"))
    out[digest(task_fingerprint(task))] = "c4/en"
    return out


if __name__ == "__main__":  # python -m gnlorp.tasks.fingerprint ../shared/data: the REFERENCE entries
    import sys

    for d, what in reference_digests(sys.argv[1]).items():
        print(f'    "{d}": "{what}",')
