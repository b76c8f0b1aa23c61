"""The options of the packaged config groups (gnlorp/conf/<group>/*.yaml), read from the files alone (no Hydra):
what the command line lists in --help and in its errors, and what the checks accept for an `optional` group."""

from __future__ import annotations

from . import CONF_DIR


def group_options(group: str) -> list[str]:
    """The public options of a config group (files starting with _ are shared parts, not choices)."""
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")
                  if not any(part.startswith("_") for part in p.relative_to(root).parts))
