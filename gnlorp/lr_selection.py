"""Learning rates chosen from a grid on a selection split, never on the split that is reported.

A *grid* is the runs of one task, model, method, rank and precision whose training settings differ only in the
learning rate (e.g. `python run.py -m -cd sweeps -cn cpu_c4`, `train.lr_factor=0.3,1,3`), each scored on a
`selection` split (C4: `task.selection_tokens`, validation blocks after the reported ones). The chosen rate has
the lowest median selection loss over its seeds; a run that did not complete (diverged, killed) scores +inf at
its rate, so a rate with any such seed is never chosen while another rate completed every seed. The tables keep
only the chosen rate's runs and list the whole grid beside them.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

LR_KEY = "train.lr"


def selection_loss(record: dict) -> float | None:
    """The last evaluation's selection loss, or None if the run was not scored on a selection split."""
    try:
        v = record["last"]["metrics"]["selection"]["loss"]
    except (KeyError, TypeError):
        return None
    return float(v) if isinstance(v, (int, float)) else None


@dataclass
class GridPoint:
    lr: float
    runs: list = field(default_factory=list)        # complete runs (tables.Run)
    failed: list = field(default_factory=list)      # runs that did not complete: (Run, status)

    @property
    def score(self) -> float:
        """Median selection loss over seeds; +inf if a seed failed or diverged to a non-finite loss."""
        losses = [selection_loss(r.record) for r in self.runs]
        if self.failed or not losses or any(v is None or not math.isfinite(v) for v in losses):
            return math.inf
        return statistics.median(losses)


@dataclass
class Grid:
    key: tuple                                        # (family, task, model, method, rank, precision)
    points: list[GridPoint]
    chosen: float | None                              # the chosen learning rate (None: every rate failed)

    def any_run(self):
        return next(r for p in self.points for r in [*p.runs, *(f[0] for f in p.failed)])

    def describe(self) -> str:
        rates = ", ".join(f"{p.lr:g}" for p in self.points)
        if self.chosen is None:
            return f"no rate of {{{rates}}} completed"
        return f"lr {self.chosen:g} chosen from {{{rates}}} on the selection loss"


def _other_settings(run) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in run.settings.items() if k != LR_KEY))


def choose(runs: list, incomplete: list) -> tuple[list, list[Grid]]:
    """(the runs to tabulate, the grids). `runs` are complete runs, `incomplete` (Run, status) pairs. Runs that are
    not part of a grid (one rate only, or no selection score) pass through unchanged."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in runs:
        groups[(r.family, r.task, r.model, r.method, r.rank, r.precision, _other_settings(r))].append(r)
    failed_by_group: dict[tuple, list] = defaultdict(list)
    for r, status in incomplete:
        failed_by_group[(r.family, r.task, r.model, r.method, r.rank, r.precision, _other_settings(r))].append(
            (r, status))

    kept, grids = [], []
    for key in sorted(set(groups) | set(failed_by_group), key=repr):
        members, failed = groups.get(key, []), failed_by_group.get(key, [])
        rates = {r.settings.get(LR_KEY) for r in members} | {r.settings.get(LR_KEY) for r, _ in failed}
        scored = members and all(selection_loss(r.record) is not None for r in members)
        if len(rates) < 2 or not scored or None in rates:
            kept += members
            continue
        points = {lr: GridPoint(float(lr)) for lr in rates}
        for r in members:
            points[r.settings[LR_KEY]].runs.append(r)
        for r, status in failed:
            points[r.settings[LR_KEY]].failed.append((r, status))
        ordered = sorted(points.values(), key=lambda p: p.lr)
        best = min(ordered, key=lambda p: (p.score, p.lr))
        chosen = best.lr if math.isfinite(best.score) else None
        grids.append(Grid(key[:6], ordered, chosen))
        if chosen is not None:
            kept += best.runs
    return kept, grids
