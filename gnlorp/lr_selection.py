"""Learning rates chosen from a grid on a selection split, never on the split that is reported.

A *grid* is the runs of one task, model, method, rank and precision whose training settings differ only in the
learning rate (e.g. `python run.py -m -cd sweeps -cn cpu_c4`, `train.lr_factor=0.3,1,3`), each scored on a
`selection` split: C4, `task.selection_tokens` (validation blocks after the reported ones), scored by its loss
at the last evaluation; GLUE, `task.selection_samples` (train rows held out), scored by the task's headline
metric at its best epoch, negated so that lower is better everywhere. The chosen rate has the lowest median
score over the seeds every rate of the grid has (more seeds run later at the chosen rate, `train.lr_choice=
selection`, join its point without changing the choice); a run that did not complete (diverged, killed) scores
+inf at its rate, so a rate with any such seed is never chosen while another rate completed every seed. The
tables report only the chosen rate's runs on the other seeds, fresh runs that took no part in the choice (the
selection seeds' runs would favour the method whose grid was noisiest), and list the whole grid beside them.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

LR_KEY = "train.lr"
# The sweeps that run a learning-rate grid on SELECTION_SEED and then the reported seeds at the chosen rate
# (sweeps/README.md; tests/e2e/test_sweeps.py checks this list against the sweep files). A run of theirs on the
# selection seed is never reported, even while its grid has only one rate so far.
GRID_SWEEPS = ("cpu_c4", "cpu_glue", "gpu_c4", "gpu_glue")
SELECTION_SEED = 0


def awaits_its_grid(run) -> bool:
    """A selection-seed run of a grid sweep, not (yet) part of a grid of two or more rates."""
    rec = run.record
    return (run.seed == SELECTION_SEED and (rec.get("origin") or {}).get("sweep") in GRID_SWEEPS
            and (rec.get("config", {}).get("train") or {}).get("lr_choice") != "selection")


def selection_epoch(record: dict, metric: str) -> dict | None:
    """The evaluation (an eval_history entry) with the best selection `metric` (higher is better; the earliest
    of equals), or None if the run has no selection split."""
    best = None
    for e in record.get("eval_history") or []:
        v = ((e.get("metrics") or {}).get("selection") or {}).get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and (best is None or v > best[0]):
            best = (v, e)
    return None if best is None else best[1]


def selection_loss(record: dict, metric: str | None = None) -> float | None:
    """What chooses (lower is better): C4's selection loss at the last evaluation, or with `metric` (GLUE's
    headline metric) minus its best value on the selection split; None if the run has no selection split."""
    if metric is not None:
        e = selection_epoch(record, metric)
        return None if e is None else -float(e["metrics"]["selection"][metric])
    try:
        v = record["last"]["metrics"]["selection"]["loss"]
    except (KeyError, TypeError):
        return None
    return float(v) if isinstance(v, (int, float)) else None


@dataclass
class GridPoint:
    lr: float
    runs: list = field(default_factory=list)        # complete runs (results.Run)
    failed: list = field(default_factory=list)      # runs that did not complete: (Run, status)

    metric: str | None = None                       # GLUE: the headline metric (selection_loss)
    seeds: frozenset = frozenset()                  # the seeds the grid is compared on (those every rate has)

    @property
    def scored_runs(self) -> list:
        return [r for r in self.runs if r.seed in self.seeds]

    @property
    def reported_runs(self) -> list:
        """The runs on seeds that took no part in the choice: the only ones a table may report."""
        return [r for r in self.runs if r.seed not in self.seeds]

    @property
    def score(self) -> float:
        """Median selection loss over the compared seeds; +inf if such a seed failed or diverged."""
        losses = [selection_loss(r.record, self.metric) for r in self.scored_runs]
        if any(r.seed in self.seeds for r, _ in self.failed) or not losses \
                or any(v is None or not math.isfinite(v) for v in losses):
            return math.inf
        return statistics.median(losses)


@dataclass
class Grid:
    key: tuple                                        # (family, task, model, method, rank, precision)
    points: list[GridPoint]
    chosen: float | None                              # the chosen learning rate (None: every rate failed)
    settings: tuple = ()                              # the training settings all its runs share (other_settings)

    def any_run(self):
        return next(r for p in self.points for r in [*p.runs, *(f[0] for f in p.failed)])

    def describe(self) -> str:
        rates = ", ".join(f"{p.lr:g}" for p in self.points)
        if self.chosen is None:
            return f"no rate of {{{rates}}} completed"
        metric = self.points[0].metric if self.points else None
        on = f"the best selection {metric}" if metric else "the selection loss"
        return f"lr {self.chosen:g} chosen from {{{rates}}} on {on} ({seeds_named(self.selection_seeds)})"

    @property
    def selection_seeds(self) -> frozenset:
        return self.points[0].seeds if self.points else frozenset()


def seeds_named(seeds) -> str:
    """"seed 0", "seeds 1–5"."""
    return f"seed{'s' if len(seeds) > 1 else ''} {seeds_text(seeds)}"


def seeds_text(seeds) -> str:
    """0, 1, 2 -> "0–2"; 1, 3 -> "1, 3"."""
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(s) for s in seeds) or "none"


def other_settings(settings: dict) -> tuple:
    """A run's training settings but the learning rate (and the seed), comparable across runs."""
    return tuple(sorted((k, repr(v)) for k, v in settings.items() if k not in (LR_KEY, "seed")))


class GridKey(NamedTuple):
    """What the runs of one grid share (compares and hashes as the plain tuple of its fields)."""

    family: str
    task: str
    model: str
    method: str
    rank: object
    precision: str
    settings: tuple


def _grid_key(run) -> GridKey:
    return GridKey(run.family, run.task, run.model, run.method, run.rank, run.precision, other_settings(run.settings))


def choose(runs: list, incomplete: list, metric_of=lambda run: None) -> tuple[list, list[Grid]]:
    """(the runs to tabulate, the grids). `runs` are complete runs, `incomplete` (Run, status) pairs, `metric_of`
    a run's selection metric for selection_loss (None: C4's loss). Of a grid, only the chosen rate's runs on seeds
    that did not choose it are tabulated; runs that are not part of a grid (one rate only, or no selection score)
    pass through unchanged, but for a grid sweep's selection-seed runs (awaits_its_grid), which are never tabulated."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in runs:
        groups[_grid_key(r)].append(r)
    failed_by_group: dict[tuple, list] = defaultdict(list)
    for r, status in incomplete:
        failed_by_group[_grid_key(r)].append((r, status))

    kept, grids = [], []
    for key in sorted(set(groups) | set(failed_by_group), key=repr):
        members, failed = groups.get(key, []), failed_by_group.get(key, [])
        rates = {r.settings.get(LR_KEY) for r in members} | {r.settings.get(LR_KEY) for r, _ in failed}
        metric = metric_of(members[0]) if members else None
        scored = members and all(selection_loss(r.record, metric) is not None for r in members)
        if len(rates) < 2 or not scored or None in rates:
            kept += [r for r in members if not awaits_its_grid(r)]
            continue
        points = {lr: GridPoint(float(lr), metric=metric) for lr in rates}
        for r in members:
            points[r.settings[LR_KEY]].runs.append(r)
        for r, status in failed:
            points[r.settings[LR_KEY]].failed.append((r, status))
        ordered = sorted(points.values(), key=lambda p: p.lr)
        seed_sets = [{r.seed for r in p.runs} | {r.seed for r, _ in p.failed} for p in ordered]
        common = frozenset(set.intersection(*seed_sets)) or frozenset(set.union(*seed_sets))
        for p in ordered:
            p.seeds = common
        best = min(ordered, key=lambda p: (p.score, p.lr))
        chosen = best.lr if math.isfinite(best.score) else None
        grids.append(Grid(key[:6], ordered, chosen, key[6]))
        if chosen is not None:
            kept += best.reported_runs
    return kept, grids
