"""GLUE tables: GaLore Table 4's layout, and the paired differences between methods."""

from __future__ import annotations

import statistics
from collections import defaultdict

from .. import lr_selection
from ..paired import paired_difference
from ..results import HEADLINE, Excluded, Run, _glue_value, _safe
from .common import (
    DASH, SPREAD_NOTE, Table, _cell, _comparisons, _dirty_mark, _distinct, _fmt, _glue_baseline, _labels,
    _left_out_section, _md_table, _paper_cell, _row_order, _seeds_text, differences_notes, headline_cells,
    selection_note,
)
from .published import AVG_EXCLUDED, GLUE_TASKS, METRIC_LABEL, PAPER_AVG_TASKS, PAPER_GLUE, TASK_LABEL


def required_margin(baseline: float) -> float:
    """How far (×100) a median must beat its task's trivial baseline to rank anything: 3 points, or a tenth of the
    distance to a perfect 100 where that is less (MRPC's F1 baseline is 81.2)."""
    return min(3.0, 0.1 * (100.0 - baseline))


def _below_baseline(median: float, baseline: float | None) -> bool:
    """The ‡ rule: a cell whose median does not clear its task's trivial baseline by required_margin (none
    recorded: never below)."""
    return baseline is not None and median < baseline + required_margin(baseline)


def glue_table(model: str, runs: list[Run], excluded: list[Excluded], grids: list = ()) -> Table:
    tasks = [t for t in GLUE_TASKS if any(r.task == t for r in runs)]
    tasks += sorted({r.task for r in runs} - set(GLUE_TASKS))
    avg_tasks = [t for t in tasks if t not in AVG_EXCLUDED and t in GLUE_TASKS]
    cells: dict[tuple, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        cells[(r.method, r.rank, r.precision, r.variant)][r.task].append(r)
    keys = sorted(cells, key=lambda k: _row_order(*k))
    labels = _labels(keys, "glue", with_rank=True)
    paper_avg_ok = tuple(avg_tasks) == PAPER_AVG_TASKS

    header = ["Method", "Source"] + [TASK_LABEL.get(t, t) for t in tasks] + (["avg"] if avg_tasks else [])
    baselines = {t: v for t in tasks if (v := _glue_baseline([r for r in runs if r.task == t])) is not None}
    rows = []
    if baselines:
        rows.append(["trivial baseline", "best constant prediction"]
                    + [_fmt(baselines[t]) if t in baselines else DASH for t in tasks] + ([DASH] if avg_tasks else []))
    for key in keys:
        medians = {}
        row_cells = []
        for t in tasks:
            rs = sorted(cells[key].get(t, []), key=lambda r: r.seed)
            vals = [_glue_value(r) for r in rs]
            if vals:
                medians[t] = statistics.median(vals)
            below = vals and _below_baseline(medians[t], baselines.get(t))
            row_cells.append(_cell(vals) + _dirty_mark(rs) + ("‡" if below else "") if vals else DASH)
        avg = _fmt(statistics.fmean(medians[t] for t in avg_tasks)) if avg_tasks and all(t in medians for t in avg_tasks) else DASH
        counts = [len(cells[key].get(t, [])) for t in tasks]
        rows.append([labels[key], _seeds_text(counts)] + row_cells + ([avg] if avg_tasks else []))
        for p in PAPER_GLUE:
            if (p.method, p.rank) != key[:2] or (p.precision and p.precision != key[2]):
                continue
            pcells = [_paper_cell(p.values.get(t)) for t in tasks]
            pavg = _paper_cell(p.avg) if paper_avg_ok else DASH
            if all(c == DASH for c in pcells) and (not avg_tasks or pavg == DASH):
                continue  # nothing the paper gives is in this table's columns
            rows.append([labels[key], f"paper ({p.source})"] + pcells + ([pavg] if avg_tasks else []))

    metric_bits = ", ".join(f"{TASK_LABEL.get(t, t)} {METRIC_LABEL[HEADLINE[t][1]]}" for t in tasks if t in HEADLINE)
    held_out = any(lr_selection.selection_epoch(r.record, HEADLINE.get(r.task, ("", "accuracy"))[1]) for r in runs)
    if held_out:
        epoch_rule = ("at the epoch with the best score on train rows held out of training (task.selection_samples), "
                      "the learning rate chosen on the same rows (glue_" + _safe(model) + "_lr_grid.md): nothing is "
                      "chosen on the dev split")
    else:
        epoch_rule = ("of the best epoch (the `best` evaluation in each result file: the GLUE convention of GaLore's "
                      "scripts, best validation score over the epochs)")
    notes = [
        f"Score ×100 {epoch_rule}: {metric_bits}" + ("; MNLI on validation_matched." if "mnli" in tasks else "."),
        SPREAD_NOTE,
    ]
    if (seeds := selection_note(grids, runs)) is not None:
        notes.append(seeds)
    if avg_tasks:
        notes.append(f"avg: mean of the row's medians over {', '.join(TASK_LABEL[t] for t in avg_tasks)} (WNLI is "
                     f"left out, as in GaLore Table 4); \"—\" where the row lacks one of them.")
    notes.append("paper: RoBERTa-base, published (GaLore Table 4; GradNormLoRP abstract, rank-8 GLUE averages only). "
                 "The published averages cover GaLore Table 4's eight tasks and are shown only where this table "
                 "averages the same eight. The GradNormLoRP abstract's LoRA average (79.23) is far below GaLore's "
                 "(85.93), so the two protocols differ: compare gaps between methods, not absolute numbers"
                 + ("; this table's model is not RoBERTa-base, so only the gaps are comparable." if model != "roberta-base" else "."))
    if baselines:
        notes.append("trivial baseline: the best score of a constant prediction on the dev split (its majority "
                     "class; STS-B: correlations of a constant, reported as 0), from the result files; ‡: the "
                     "cell's median does not beat it by 3 points, or by a tenth of the distance to 100 where that is "
                     "less (a cell that close to a constant prediction cannot rank the methods).")
    if any(r.dirty for r in runs):
        notes.append("†: the cell includes runs from a git tree with uncommitted changes (--allow-dirty).")
    return Table(f"glue_{_safe(model)}", f"GLUE, {model}: dev-set score per task (GaLore Table 4 layout)", header,
                 ["l", "l"] + ["r"] * (len(header) - 2), rows, notes,
                 [_glue_setup(tasks, runs)] + _left_out_section(excluded))


def glue_differences_table(model: str, runs: list[Run]) -> Table | None:
    """Paired differences (gnlorp/paired.py) per task and on the average, from the runs of glue_table."""
    tasks = [t for t in GLUE_TASKS if any(r.task == t for r in runs)]
    avg_tasks = [t for t in tasks if t not in AVG_EXCLUDED]
    scores: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        v = _glue_value(r)
        if v is not None:
            scores[(r.method, r.rank, r.precision, r.variant)][r.task][r.seed] = v
    keys = sorted(scores, key=lambda k: _row_order(*k))
    labels = _labels(keys, "glue", with_rank=True)
    # the tasks on which every method's median clears the trivial baseline: a difference between two runs that both
    # predict the majority class says nothing about the methods
    baselines = {t: _glue_baseline([r for r in runs if r.task == t]) for t in avg_tasks}
    above = [t for t in avg_tasks if baselines[t] is not None
             and not any(_below_baseline(statistics.median(scores[k][t].values()), baselines[t])
                         for k in keys if scores[k][t])]
    averaged = [ts for ts in (avg_tasks, above) if ts]
    if above == avg_tasks:
        averaged = averaged[:1]

    def averages(key, over):
        seeds = set.intersection(*(set(scores[key][t]) for t in over))
        return {s: statistics.fmean(scores[key][t][s] for t in over) for s in seeds}

    rows = []
    for a, b in _comparisons(keys):
        cells = []
        for t in tasks:
            d = paired_difference(scores[a][t], scores[b][t])
            cells.append(d.text() if d else DASH)
        for over in averaged:
            d = paired_difference(averages(a, over), averages(b, over))
            cells.append(d.text() if d else DASH)
        # the headline: the last average (above baseline where it exists), seed by seed, and what it allows
        rows.append([f"{labels[a]} − {labels[b]}"] + cells + headline_cells(d, higher_is_better=True))
    if not rows:
        return None
    headline = ["avg", "avg above baseline"][len(averaged) - 1] if averaged else None
    header = (["Difference"] + [TASK_LABEL.get(t, t) for t in tasks] + ["avg", "avg above baseline"][:len(averaged)]
              + [f"{headline}: per seed", "sign test p", "detectable", "verdict"])
    notes = differences_notes("scores ×100 (runs with the same seed share data order and subset)", headline)
    if avg_tasks:
        notes.append(f"avg: per seed, the mean over {', '.join(TASK_LABEL[t] for t in avg_tasks)}, then paired.")
    if len(averaged) > 1:
        notes.append(f"avg above baseline: the same over {', '.join(TASK_LABEL[t] for t in above)}, the tasks on which "
                     "every method's median clears the trivial baseline (glue_" + _safe(model) + ".md); on the others "
                     "(‡ there) a difference compares runs that stay at or next to a constant prediction.")
    return Table(f"glue_{_safe(model)}_differences", f"GLUE, {model}: paired differences between methods",
                 header, ["l"] + ["r"] * (len(header) - 1), rows, notes)


def _glue_setup(tasks: list[str], runs: list[Run]) -> str:
    rows = []
    for t in tasks:
        rs = [r for r in runs if r.task == t]
        lrs = defaultdict(set)
        for r in rs:
            lr = (r.config.get("derived") or {}).get("lr")
            if lr is not None:
                lrs[r.method].add(f"{float(lr):g}")
        lr_text = ", ".join(f"{m} {'/'.join(sorted(v))}" for m, v in sorted(lrs.items(), key=lambda kv: _row_order(kv[0], 0, "")))
        rows.append([
            TASK_LABEL.get(t, t),
            _distinct(r.config["train"].get("epochs") for r in rs),
            _distinct(r.config["train"].get("batch_size") for r in rs),
            _distinct(r.config["task"].get("max_length") for r in rs),
            _distinct(r.config["task"].get("max_train_samples") for r in rs),
            _distinct(r.seed for r in rs),
            lr_text or DASH,
        ])
    table = _md_table(["task", "epochs", "batch", "max length", "train examples", "seeds", "peak lr"], rows,
                      ["l", "r", "r", "r", "r", "l", "l"])
    return "## Setup of the runs in this table\n\n" + table
