"""C4 tables: GaLore Table 2's layout (and Table 3's for LLaMA-7B), and their learning-rate grids."""

from __future__ import annotations

from collections import defaultdict

from .. import lr_selection
from ..paired import paired_difference
from ..results import Excluded, Run, _c4_value, _glue_value
from .common import (
    DASH, SPREAD_NOTE, Table, _c4_at_step, _cell, _comparisons, _dirty_mark, _distinct, _labels, _left_out_section,
    _paper_cell, _row_order, _seeds_text, _size_order, _tokens, differences_notes, headline_cells, selection_note,
)
from .published import (
    PAPER_7B, PAPER_C4, PAPER_C4_RANK_ROW, PAPER_C4_TOKENS_ROW, SIZE_LABEL, STEPS_7B, TASK_LABEL, TOKENS_7B,
)


TITLES = {"c4_paper-sizes": "C4 pre-training, LLaMA 60M–1B: validation perplexity (GaLore Table 2 layout)",
          "c4_llama_7b": "C4 pre-training, LLaMA-7B: validation perplexity by step (GaLore Table 3 layout)",
          "c4_other-sizes": "C4 pre-training, model sizes the papers do not have: validation perplexity "
                            "(GaLore Table 2 layout)"}


def _c4_keys(runs: list[Run]) -> tuple[dict, list[tuple]]:
    """Rows of a C4 table: (method, rank, precision), with the rank folded into the column (as in GaLore Table 2)
    unless one method/precision has runs at two ranks for the same size."""
    ranks = defaultdict(set)
    for r in runs:
        ranks[(r.method, r.precision, r.model)].add(r.rank)
    split = {(m, p) for (m, p, _), rs in ranks.items() if len(rs) > 1}
    key_of = {}
    for r in runs:
        key_of[id(r)] = (r.method, r.rank if (r.method, r.precision) in split else None, r.precision, r.variant)
    keys = sorted(set(key_of.values()), key=lambda k: _row_order(*k))
    return key_of, keys


def _lr_text(runs: list[Run]) -> str:
    return _distinct(f"{r.settings.get(lr_selection.LR_KEY):g}" for r in runs
                     if isinstance(r.settings.get(lr_selection.LR_KEY), (int, float))) or DASH


def c4_table(stem: str, runs: list[Run], excluded: list[Excluded], grids: list = ()) -> Table:
    key_of, keys = _c4_keys(runs)
    with_rank = any(k[1] is not None for k in keys)
    labels = _labels(keys, "c4", with_rank=with_rank)
    seven = stem == "c4_llama_7b"
    if seven:
        columns = list(STEPS_7B)
        col_label = [f"{s // 1000}K steps" for s in columns]
        paper, paper_note = PAPER_7B, "GaLore Table 3"
    else:
        columns = sorted({r.model for r in runs}, key=_size_order)
        col_label = [SIZE_LABEL.get(m, m) for m in columns]
        paper = PAPER_C4 if stem == "c4_paper-sizes" else ()
        paper_note = "GaLore Table 2"

    cells: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for c in columns:
            if seven:
                v = _c4_at_step(r, c)
                if v is not None:
                    cells[key_of[id(r)]][c].append((r, v))
            elif r.model == c:
                cells[key_of[id(r)]][c].append((r, _c4_value(r)))

    tuned = bool(grids)  # a learning-rate column: each row's rate, chosen on the selection split
    header = ["Method", "Source"] + (["lr"] if tuned else []) + col_label
    lr_cell = (lambda text: [text]) if tuned else (lambda text: [])
    rows, shown = [], []      # shown: the sources of the paper rows in the table, in order
    for key in keys:
        row = []
        for c in columns:
            pairs = sorted(cells[key].get(c, []), key=lambda rv: rv[0].seed)
            row.append(_cell([v for _, v in pairs]) + _dirty_mark([r for r, _ in pairs]) if pairs else DASH)
        key_runs = [r for r in runs if key_of[id(r)] == key]
        rows.append([labels[key], _seeds_text([len(cells[key].get(c, [])) for c in columns])]
                    + lr_cell(_lr_text(key_runs)) + row)
        for p in paper:
            if p.method != key[0] or key[1] is not None or (p.precision and p.precision != key[2]):
                continue
            rows.append([labels[key], f"paper ({p.source})"] + lr_cell(DASH)
                        + [_paper_cell(p.values.get(c)) for c in columns])
            shown += [p.source] if p.source not in shown else []

    # the "rank r" and "training tokens" rows of GaLore Table 2: ours from the runs, the paper's beside them
    low = [r for r in runs if r.rank is not None]
    if seven:
        rows.append(["training tokens", "paper (GaLore Table 3)"] + [TOKENS_7B[c] for c in columns])
    else:
        rows.append(["rank r", "ours"] + lr_cell(DASH)
                    + [_distinct(r.rank for r in low if r.model == c) or DASH for c in columns])
        if paper:
            rows.append(["rank r", "paper (GaLore Table 2)"] + lr_cell(DASH)
                        + [PAPER_C4_RANK_ROW.get(c, DASH) for c in columns])
        rows.append(["training tokens", "ours"] + lr_cell(DASH)
                    + [_distinct(_tokens(r) for r in runs if r.model == c) for c in columns])
        if paper:
            rows.append(["training tokens", "paper (GaLore Table 2)"] + lr_cell(DASH)
                        + [PAPER_C4_TOKENS_ROW.get(c, DASH) for c in columns])

    if seven:
        what = "validation perplexity at each evaluation step (eval_history)"
    else:
        what = "final validation perplexity (the last evaluation of each run)"
    notes = [f"Cells: {what}; lower is better.", SPREAD_NOTE]
    if tuned:
        notes.append(f"lr: each method's peak learning rate, chosen from its grid by the lowest loss on the selection "
                     f"slice (validation blocks after the reported ones, never reported); the grids: {stem}_lr_grid.md.")
        notes.append(selection_note(grids, runs))
    if paper:
        notes.append(f"paper: published numbers ({paper_note}); " + (
            "GaLore's cells add the parameter + optimizer-state memory estimate (BF16) in parentheses."
            if not seven else "8-bit GaLore at rank 1024 and 8-bit Adam; tokens per column as published."))
        others = [s for s in shown if not s.startswith("GaLore")]
        if others:
            notes.append(f"Other paper rows: each method's own paper's C4 table ({' / '.join(others)}), at its own "
                         "scripts' ranks and scales (sweeps/README.md), perplexity only; \"table unchecked\": the "
                         "figures are not yet checked against the paper's table (gnlorp/tables/published.py).")
    elif not seven:
        notes.append("The papers have no model of these sizes, so no published numbers sit beside these rows; "
                     "GaLore Table 2's smallest model is LLaMA-60M (full-rank perplexity 34.06).")
    if any(r.dirty for r in runs):
        notes.append("†: the cell includes runs from a git tree with uncommitted changes (--allow-dirty).")
    return Table(stem, TITLES[stem], header, ["l", "l"] + ["r"] * (len(columns) + tuned), rows, notes,
                 _left_out_section(excluded))


def _choice_mark(grid, point) -> str:
    if point.lr != grid.chosen:
        return ""
    edge = len(grid.points) > 1 and point.lr in (grid.points[0].lr, grid.points[-1].lr)
    return "**chosen**, at the grid's edge" if edge else "**chosen**"


def _grid_variant(grid, grids: list) -> str:
    """" [key=value, ...]": the training settings that set `grid` apart from the other grids of its task (or size),
    method, rank and precision (e.g. a train subset), as the tables' variant labels; "" where it has no such twin."""
    twins = [g for g in grids if g.key[1:6] == grid.key[1:6]]
    if len(twins) < 2:
        return ""
    settings = [g.any_run().settings for g in twins]
    keys = sorted({k for s in settings for k in s
                   if k != lr_selection.LR_KEY and any(s.get(k) != o.get(k) for o in settings)})
    mine = grid.any_run().settings
    return " [" + ", ".join(f"{k}={mine.get(k)}" for k in keys) + "]" if keys else ""


def lr_grid_table(stem: str, grids: list) -> Table:
    """Every point of every learning-rate grid of a table: its selection score (what chose) and its reported
    score (what the table shows), so the choice can be checked."""
    glue = stem.startswith("glue_")
    table = "glue" if glue else "c4"
    # GLUE's rows are grouped by rank as its table's; C4's table folds the rank into its column (a rank-free method
    # such as APOLLO-Mini sits among the others in the methods' order)
    keys = sorted(grids, key=lambda g: (g.key[1], _row_order(g.key[3], g.key[4] if glue else None, g.key[5])))
    labels = _labels(sorted({(g.key[3], g.key[4], g.key[5], "") for g in keys}, key=lambda k: _row_order(*k)),
                     table, with_rank=glue)
    rows = []
    for g in keys:
        label = labels[(g.key[3], g.key[4], g.key[5], "")]
        where = TASK_LABEL.get(g.key[1], g.key[1]) if glue else SIZE_LABEL.get(g.key[2], g.key[2])
        where += _grid_variant(g, keys)
        for p in g.points:
            runs = sorted(p.runs, key=lambda r: r.seed)
            sel = [lr_selection.selection_loss(r.record, p.metric) for r in p.scored_runs]
            sel = [(-100.0 * v if glue else v) for v in sel if v is not None]
            reported = [v for v in (_glue_value(r) if glue else _c4_value(r) for r in runs) if v is not None]
            state = "; ".join(f"seed {r.seed} {status}" for r, status in sorted(p.failed, key=lambda f: f[0].seed))
            rows.append([label, where, f"{p.lr:g}", str(len(runs) + len(p.failed)),
                         _cell(sel, 2 if glue else 4) if runs else DASH, _cell(reported) if runs else DASH,
                         _choice_mark(g, p) + (f" ({state})" if state else "")])
    if glue:
        notes = ["Selection score: the task's headline metric ×100 on train rows held out of training "
                 "(task.selection_samples) at the run's best epoch there, median ± half the range over the seeds "
                 "every rate has; the chosen rate has the highest (a rate with a failed seed is never chosen).",
                 "Dev score: the headline metric ×100 on the dev split at that same epoch, as in the main table "
                 "(shown for every rate; neither the rate nor the epoch is chosen on it)."]
        header = ["Method", "Task", "lr", "Runs", "Selection score", "Dev score", ""]
    else:
        notes = ["Selection loss: mean cross-entropy on the selection slice at the last evaluation, median ± half "
                 "the range over the seeds every rate has; the chosen rate has the lowest (a rate with a failed "
                 "seed is never chosen).",
                 "Validation perplexity: the reported slice, as in the main table, over every seed run at the rate "
                 "(shown for every rate, chosen on the other slice)."]
        header = ["Method", "Model", "lr", "Runs", "Selection loss", "Validation perplexity", ""]
    notes.append("A rate chosen at the grid's edge may not be the best one: a wider grid could find a better rate.")
    return Table(f"{stem}_lr_grid", f"Learning-rate grids of {stem}.md: " + header[4].lower() + " and "
                 + header[5].lower(), header, ["l", "l", "r", "r", "r", "r", "l"], rows, notes)


def c4_differences_table(stem: str, runs: list[Run]) -> Table | None:
    """Paired differences (gnlorp/paired.py) of final validation perplexity between methods, per model size; the
    headline columns are the largest model's. None where no two methods share two seeds (and LLaMA-7B's table,
    whose runs are single)."""
    if stem == "c4_llama_7b":
        return None
    key_of, keys = _c4_keys(runs)
    labels = _labels(keys, "c4", with_rank=any(k[1] is not None for k in keys))
    models = sorted({r.model for r in runs}, key=_size_order)
    scores: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        scores[key_of[id(r)]][r.model][r.seed] = _c4_value(r)
    rows = []
    for a, b in _comparisons(keys):
        diffs = [paired_difference(scores[a][m], scores[b][m]) for m in models]
        if not any(diffs):
            continue
        rows.append([f"{labels[a]} − {labels[b]}"] + [d.text() if d else DASH for d in diffs]
                    + headline_cells(diffs[-1], higher_is_better=False))
    if not rows:
        return None
    last = SIZE_LABEL.get(models[-1], models[-1])
    header = (["Difference"] + [SIZE_LABEL.get(m, m) for m in models]
              + [f"{last}: per seed", "sign test p", "detectable", "verdict"])
    notes = differences_notes("final validation perplexity (runs with the same seed share the initial weights and "
                              "the data order; negative: the first method reaches the lower perplexity)", last)
    return Table(f"{stem}_differences", f"{TITLES[stem].split(':')[0]}: paired differences of validation perplexity "
                 "between methods", header, ["l"] + ["r"] * (len(header) - 1), rows, notes)
