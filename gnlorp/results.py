"""The results model: the runs read from a results folder (results/*.json, gnlorp/record.py's load_results), each a
Run with its task, model, method, rank, precision, seed and settings; which are usable, which are left out and why,
and the learning-rate grids among them (gnlorp/lr_selection.py chooses). The tables (gnlorp/tables/) are built from
`collect`; the runner asks `rate_from_grid` for train.lr_choice=selection."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import lr_selection
from .identity import EXCLUDED_KEYS
from .methods import is_low_rank
from .record import load_results

# (split, metric) of the official GLUE headline score of each task
HEADLINE = {"cola": ("validation", "matthews_correlation"), "stsb": ("validation", "pearson"),
            "mrpc": ("validation", "f1"), "qqp": ("validation", "f1"), "mnli": ("validation_matched", "accuracy"),
            "rte": ("validation", "accuracy"), "sst2": ("validation", "accuracy"), "qnli": ("validation", "accuracy"),
            "wnli": ("validation", "accuracy")}
C4_PAPER_SIZES = ("llama_60m", "llama_130m", "llama_350m", "llama_1b")  # GaLore Table 2's sizes: one table

_UNTRACKED = set(EXCLUDED_KEYS) | {"rank"}  # older records: the rank group also wrote a top-level rank


@dataclass


class Run:
    name: str
    file: str
    family: str
    task: str
    model: str
    method: str
    rank: int | None
    precision: str
    seed: int
    record: dict = field(repr=False)
    dirty: bool = False
    variant: str = ""     # the settings that set this run apart from others of its method, rank and precision

    @property
    def settings(self) -> dict:
        """The training settings of its run identity (older records: the flattened config, lr resolved)."""
        ident = self.record.get("identity") or {}
        if "settings" in ident:
            return {k: v for k, v in ident["settings"].items() if k != "seed"}
        flat = {}

        def walk(node, prefix):
            for k, v in node.items():
                if isinstance(v, dict) and k not in ("lr", "alpha"):
                    walk(v, f"{prefix}{k}.")
                elif f"{prefix}{k}" not in _UNTRACKED:
                    flat[f"{prefix}{k}"] = v
        walk({k: v for k, v in self.config.items() if k not in ("derived", "seed")}, "")
        flat["train.lr"] = (self.config.get("derived") or {}).get("lr")
        return flat

    @property
    def config(self) -> dict:
        return self.record["config"]


@dataclass


class Excluded:
    name: str
    file: str
    group: str | None     # the table this run would have gone into
    reason: str


def _as_run(rec: dict, file: str) -> Run | str:
    cfg = rec.get("config") or {}
    try:
        task, method, model = cfg["task"], cfg["method"], cfg["model"]
        family = str(task["family"])
        rank = cfg.get("rank", method.get("rank")) if is_low_rank(method.get("name")) else None
        return Run(rec["run_name"], file, family, str(task["name"]), str(model["name"]), str(method["name"]),
                   None if rank is None else int(rank), str(cfg["precision"]["name"]), int(cfg.get("seed", 0)), rec,
                   bool((rec.get("git") or {}).get("dirty")))
    except (KeyError, TypeError, ValueError) as exc:
        return f"config lacks {exc}"


def _mark_variants(runs: list[Run]) -> None:
    """Runs of one method, rank and precision that differ in a training setting other than the seed are never
    pooled: each gets a variant label naming the settings in which they differ (e.g. `train.lr=0.001`)."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r.family, r.task, r.model, r.method, r.rank, r.precision)].append(r)
    for rs in groups.values():
        settings = [r.settings for r in rs]
        keys = sorted({k for s in settings for k in s if any(s.get(k) != o.get(k) for o in settings)})
        for r, s in zip(rs, settings):
            r.variant = ", ".join(f"{k}={s.get(k)}" for k in keys)


def _selection_metric(run: Run) -> str | None:
    return HEADLINE.get(run.task, ("validation", "accuracy"))[1] if run.family == "glue" else None


def _glue_value(run: Run) -> float | None:
    """×100 headline dev score: at the epoch with the best selection score where the run held out a selection
    split (so neither the epoch nor the learning rate is chosen on dev), else at the best dev epoch (`best`)."""
    split, metric = HEADLINE.get(run.task, ("validation", "accuracy"))
    chosen = lr_selection.selection_epoch(run.record, metric)
    try:
        v = (chosen or run.record["best"])["metrics"][split][metric]
    except (KeyError, TypeError):
        return None
    return 100.0 * float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _c4_value(run: Run) -> float | None:
    try:
        v = run.record["last"]["metrics"]["validation"]["perplexity"]
    except (KeyError, TypeError):
        return None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _group(run: Run) -> str:
    if run.family == "glue":
        return f"glue_{_safe(run.model)}"
    if run.model in C4_PAPER_SIZES:
        return "c4_paper-sizes"
    if run.model == "llama_7b":
        return "c4_llama_7b"
    return "c4_other-sizes"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


OLDER_RECORD = "an older record (written before run identities: no identity.settings)"


def _has_identity(run: Run) -> bool:
    return "settings" in (run.record.get("identity") or {})


def _leave_out_older_records(runs: list[Run], incomplete: list[tuple[Run, str]], excluded: list[Excluded],
                             folder: str) -> tuple[list[Run], list[tuple[Run, str]]]:
    """A record without identity.settings (schema 1 before run identities) is compared with others by its
    flattened config, which only records of its own kind share: in a table whose other runs carry an identity it
    would become rows of spurious variants. There it is left out and named (`excluded`), with what to do."""
    modern = {_group(r) for r in [*runs, *(r for r, _ in incomplete)] if _has_identity(r)}

    def older(r: Run) -> bool:
        return _group(r) in modern and not _has_identity(r)

    for r in [*runs, *(r for r, _ in incomplete)]:
        if older(r):
            excluded.append(Excluded(r.name, r.file, _group(r), f"{OLDER_RECORD}, whose settings cannot be compared "
                                     f"with the other runs of this table: rerun its config, or move the file out of "
                                     f"{folder}/"))
    return [r for r in runs if not older(r)], [(r, st) for r, st in incomplete if not older(r)]


class Collected(NamedTuple):
    runs: list
    excluded: list
    unreadable: list
    grids: list


def collect(results_dir: str | Path, allow_dirty: bool = False) -> Collected:
    """The usable runs, excluded runs, unreadable files and learning-rate grids of a results folder, each sorted by
    file name; of a learning-rate grid (gnlorp/lr_selection.py) only the chosen rate's runs are usable."""
    records, problems = load_results(results_dir)
    runs: list[Run] = []
    incomplete: list[tuple[Run, str]] = []
    excluded: list[Excluded] = []
    seen: dict[tuple, Run] = {}
    for rec in records:
        file = f"{rec['run_name']}.json"  # the runner names every result file after its run
        run = _as_run(rec, file)
        if isinstance(run, str):
            excluded.append(Excluded(rec["run_name"], file, None, run))
            continue
        group = _group(run)
        if run.family not in ("glue", "c4"):
            excluded.append(Excluded(run.name, file, None, f"unknown task family {run.family!r}"))
        elif rec["status"] != "complete":
            excluded.append(Excluded(run.name, file, group, f"{rec['status']} (status is not complete)"))
            if not run.dirty or allow_dirty:
                incomplete.append((run, rec["status"]))
        elif run.dirty and not allow_dirty:
            excluded.append(Excluded(run.name, file, group, "ran from a git tree with uncommitted changes (git.dirty)"))
        elif (_glue_value(run) if run.family == "glue" else _c4_value(run)) is None:
            want = "best/{}/{}".format(*HEADLINE.get(run.task, ("validation", "accuracy"))) if run.family == "glue" \
                else "last/validation/perplexity"
            excluded.append(Excluded(run.name, file, group, f"no {want} in the result"))
        else:
            runs.append(run)
    runs, incomplete = _leave_out_older_records(runs, incomplete, excluded, Path(results_dir).name)
    chosen, grids = lr_selection.choose(runs, incomplete, metric_of=_selection_metric)
    chosen_ids = {id(r) for r in chosen}
    for grid in grids:
        for point in grid.points:
            for r in point.runs:
                if id(r) in chosen_ids:
                    continue
                why = (f"selection run: seed {r.seed} chose lr {point.lr:g}, so it is never reported"
                       if point.lr == grid.chosen else f"learning-rate grid: lr {point.lr:g} not chosen")
                excluded.append(Excluded(r.name, r.file, _group(r), f"{why} ({grid.describe()})"))
    in_grids = {id(r) for grid in grids for point in grid.points for r in point.runs}
    for r in runs:
        if id(r) not in chosen_ids and id(r) not in in_grids:  # lr_selection.awaits_its_grid
            excluded.append(Excluded(r.name, r.file, _group(r), f"selection run (seed {r.seed} of a "
                                     f"{r.record['origin']['sweep']} grid): reported never, and its grid has one "
                                     f"rate so far"))
    runs = [r for r in runs if id(r) in chosen_ids]
    _mark_variants(runs)
    kept = []
    for run in runs:
        key = (run.family, run.task, run.model, run.method, run.rank, run.precision, run.variant, run.seed)
        if key in seen:
            excluded.append(Excluded(run.name, run.file, _group(run), f"same model, task, method, rank, precision, "
                                                                     f"settings and seed as {seen[key].name} (kept)"))
            continue
        seen[key] = run
        kept.append(run)
    runs = kept
    # load_results names files by path: keep the file name only (no machine-specific directories in the outputs)
    unreadable = sorted((Path(p).name, reason) for p, reason in problems)
    return Collected(runs, excluded, unreadable, grids)


def rate_from_grid(results_dir: str | Path, key: tuple, settings: dict) -> dict:
    """For train.lr_choice=selection: {"lr": the rate the complete grid of this config (key = family, task, model,
    method, rank, precision; the same training settings but the rate and the seed) in results_dir chose, "lr_choice":
    how}. A UserError if there is no such grid or none of its rates completed."""
    from .errors import UserError

    grids = collect(results_dir, allow_dirty=True).grids
    wanted = lr_selection.other_settings(settings)
    for g in grids:
        if g.key == key and g.settings == wanted:
            if g.chosen is None:
                raise UserError(f"train.lr_choice=selection: {g.describe()} in {results_dir}; run the grid again "
                                f"with other rates, or set train.lr_choice=given.")
            point = next(p for p in g.points if p.lr == g.chosen)
            seed = settings.get("seed")
            if seed in point.seeds:
                raise UserError(f"train.lr_choice=selection: seed {seed} is one of the seeds that chose the rate "
                                f"({g.describe()}); a reported run needs a seed the grid did not use, e.g. seed="
                                f"{max(s for p in g.points for s in p.seeds) + 1}.")
            return {"lr": g.chosen, "lr_choice": {
                "by": "selection", "grid": [p.lr for p in g.points], "seeds": sorted(point.seeds),
                "chosen_on": sorted(r.file for r in point.scored_runs)}}
    raise UserError(f"train.lr_choice=selection: {results_dir} holds no learning-rate grid of this config (the same "
                    f"settings at two or more rates, each scored on a selection split); run the grid first "
                    f"(e.g. -m train.lr_factor=0.3,1,3 with task.selection_tokens or task.selection_samples), or set "
                    f"train.lr_choice=given.")
