"""Command-line conveniences applied before Hydra parses argv."""

from __future__ import annotations

import re

# Hydra refuses a config-group choice that parses as an int ("Config group override must be a string"),
# so `rank=8` or `rank=4,8` would fail although conf/rank/8.yaml exists. Quoting makes it a string choice.
_RANK = re.compile(r"^(rank)=(\d+(?:,\d+)*)$")


def quote_group_ints(args: list[str]) -> list[str]:
    out = []
    for a in args:
        m = _RANK.match(a)
        out.append(f"{m.group(1)}=" + ",".join(f"'{v}'" for v in m.group(2).split(",")) if m else a)
    return out
