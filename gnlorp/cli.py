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


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_and_exit(cfg) -> None:
    """run.py's body: run one job; a user error or a Ctrl-C outside the training loop (which saves and stops
    on its own) ends in one sentence and a non-zero exit. In a multirun with keep_going=true a failed job is
    reported and the sweep goes on to the next one (a rerun with skip_complete=true retries only the failures)."""
    import os
    import sys

    from gnlorp.errors import UserError
    from gnlorp.runner import run

    try:
        code = run(cfg).exit_code
    except UserError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for stack traces
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C) outside training; nothing of this step was saved: rerun the same "
              "command (with resume=true to continue from a checkpoint).", file=sys.stderr)
        code = 130
    if code and code != 130 and cfg.get("keep_going") and _in_multirun():
        print(f"keep_going=true: this job failed (exit {code}); going on with the sweep.", file=sys.stderr)
        return
    if code:
        sys.exit(code)
