"""results/*.json -> the papers' tables (Markdown and LaTeX) and plots (PNG) under results/tables/.

  python -m gnlorp.tables                       # what `make tables` runs: --results results --out results/tables
  python -m gnlorp.tables --results DIR --out DIR [--allow-dirty] [--no-memory] [--no-readme]

With neither --results nor --out given (what `make tables` runs), results/README.md is written too, from the template
gnlorp/tables/results_readme.md and the tables just written (results_readme.py).

What comes out (one file per table, each with its notes; index.md lists them and every file left out), and the
module of this package that makes it:
  glue_<model>.md/.tex         glue.py: GaLore Table 4 layout: rows = method (+rank), columns = the GLUE tasks run,
                               avg; the trivial baseline and the published RoBERTa-base rows beside ours
  glue_<model>_differences     glue.py: paired differences between methods over seeds: per seed, t-intervals, verdicts
  c4_paper-sizes.md/.tex       c4.py: GaLore Table 2 layout: rows = method, columns = LLaMA 60M..1B
  c4_llama_7b.md/.tex          c4.py: GaLore Table 3 layout: perplexity at 40K / 80K / 120K / 150K steps
  c4_other-sizes.md/.tex       c4.py: the same for sizes the papers do not have (the CPU-scale 20M LLaMA)
  c4_<...>_differences         c4.py: paired differences of perplexity between methods over seeds (as GLUE's)
  <table>_lr_grid.md/.tex      c4.py: every point of the learning-rate grids behind a table (gnlorp/lr_selection.py)
  memory.md/.tex, memory.png   memory.py: optimizer-state memory of every method, LLaMA 60M..7B, 16-, 8- and 4-bit, at the
                               paper's ranks, against the published claims (analytic: needs no results)
  loss_<...>.png, dev_glue_<...>.png
                               plots.py: training loss per C4 size, GLUE dev score per epoch per task
  frontier_c4_<model>.png      plots.py: per C4 size, each method's measured optimizer-state bytes (and the memory
                               model's training peak) against its final validation perplexity, seeds' min-max bars
Shared: gnlorp/results.py (the runs read from results/: the results model below the tables and the runner),
common.py (values, cells, labels, Table), published.py (the papers' numbers).

Rules: a cell is the median over seeds ± half the range; of a learning-rate grid only the chosen rate's runs on seeds
that did not choose it are reported (lr_selection.choose); a run that is not complete, or that ran from a git tree with
uncommitted changes (git.dirty), is left out and named, as is a record of the older schema (no identity.settings) in a
table whose other runs have one (results._leave_out_older_records); a file load_results cannot read is named; a
published cell the paper does not give stays "—". Same results in, same bytes out: sorted rows, fixed number formats,
no timestamps, PNGs without software/date metadata.
"""

from __future__ import annotations

import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from ..results import (  # HEADLINE, Run, collect: re-exported, the package's public names
    HEADLINE, OLDER_RECORD, Excluded, Run, _group, _safe, collect,
)
from .c4 import _c4_keys, c4_differences_table, c4_table, lr_grid_table
from .common import (  # METHOD_ORDER, method_label: re-exported, the package's public names
    METHOD_ORDER, Table, _excluded_lines, _labels, _row_order, _size_order, method_label,
)
from .glue import glue_differences_table, glue_table
from .memory import memory_tables, peak_table
from .plots import _RC, dev_metric_plot, frontier_plot, frontier_points, loss_plot, memory_plot
from .published import GLUE_TASKS, PAPER_AVG_TASKS, TASK_LABEL

__all__ = ["build_tables", "collect", "main", "Run", "Table", "HEADLINE", "METHOD_ORDER", "PAPER_AVG_TASKS",
           "method_label", "memory_tables", "memory_plot", "peak_table", "glue_table", "c4_table"]

GENERATED = re.compile(r"^(glue_.*|c4_.*|memory|peak_memory|index|loss_.*|dev_glue_.*|frontier_.*)\.(md|tex|png)$")


def build_tables(results_dir: str | Path = "results", out_dir: str | Path | None = None, *,
                 allow_dirty: bool = False, memory_rows: list[dict] | None = None, memory: bool = True) -> list[Path]:
    """Write every table and plot for `results_dir` into `out_dir` (default results_dir/tables); returns the paths
    written, sorted. `memory_rows`: llama_memory_table() rows to use (computed when None and memory=True)."""
    import matplotlib

    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir / "tables"
    out.mkdir(parents=True, exist_ok=True)
    runs, excluded, unreadable, grids = collect(results_dir, allow_dirty=allow_dirty)

    written: set[str] = set()
    tables: list[Table] = []
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[_group(r)].append(r)
    excluded_by_group: dict[str, list[Excluded]] = defaultdict(list)
    for e in excluded:
        if e.group:
            excluded_by_group[e.group].append(e)

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_RC)
        started = time.monotonic()
        for i, stem in enumerate(sorted(groups)):
            rs = groups[stem]
            _progress(f"{stem}: {len(rs)} runs ({i + 1} of {len(groups)} tables)", started)
            if stem.startswith("glue_"):
                model = rs[0].model
                stem_grids = [g for g in grids if _group(g.any_run()) == stem]
                table = glue_table(model, rs, excluded_by_group.get(stem, []), stem_grids)
                if stem_grids:
                    tables.append(lr_grid_table(stem, stem_grids))
                differences = glue_differences_table(model, rs)
                if differences is not None:
                    tables.append(differences)
                keys = sorted({(r.method, r.rank, r.precision, r.variant) for r in rs}, key=lambda k: _row_order(*k))
                labels = _labels(keys, "glue", with_rank=True)
                for task in sorted({r.task for r in rs}, key=lambda t: (GLUE_TASKS + (t,)).index(t)):
                    trs = [r for r in rs if r.task == task]
                    name = f"dev_glue_{_safe(model)}_{task}.png"
                    dev_metric_plot(out / name, f"GLUE {TASK_LABEL.get(task, task)}, {model}: dev score per epoch "
                                    "(median over seeds, bars: min-max)", trs, labels,
                                    lambda r: (r.method, r.rank, r.precision, r.variant))
                    written.add(name)
            else:
                stem_grids = [g for g in grids if _group(g.any_run()) == stem]
                table = c4_table(stem, rs, excluded_by_group.get(stem, []), stem_grids)
                if stem_grids:
                    tables.append(lr_grid_table(stem, stem_grids))
                differences = c4_differences_table(stem, rs)
                if differences is not None:
                    tables.append(differences)
                key_of_map, keys = _c4_keys(rs)
                labels = _labels(keys, "c4", with_rank=any(k[1] is not None for k in keys))
                for model in sorted({r.model for r in rs}, key=_size_order):
                    mrs = [r for r in rs if r.model == model]
                    name = f"loss_c4_{_safe(model)}.png"
                    loss_plot(out / name, f"C4 pre-training, {model}: training loss per method", mrs, labels,
                              lambda r, k=key_of_map: k[id(r)])
                    written.add(name)
                    points = frontier_points(mrs, labels, lambda r, k=key_of_map: k[id(r)])
                    if points:  # runs that recorded their optimizer-state bytes
                        name = f"frontier_c4_{_safe(model)}.png"
                        frontier_plot(out / name, f"C4 pre-training, {model}: memory against final validation "
                                      "perplexity per method", points)
                        written.add(name)
            tables.append(table)
        if memory:
            _progress("memory: optimizer-state bytes of LLaMA 60M..7B on the meta device", started)
            if memory_rows is None:
                from ..memory import llama_memory_table

                memory_rows = llama_memory_table()
            tables.append(memory_tables(memory_rows))
            memory_plot(out / "memory.png", memory_rows)
            written.add("memory.png")
            if (peak := peak_table(results_dir / "memory")) is not None:
                tables.append(peak)

    for t in tables:
        (out / f"{t.stem}.md").write_text(t.markdown(), encoding="utf-8")
        (out / f"{t.stem}.tex").write_text(t.latex(), encoding="utf-8")
        written.update({f"{t.stem}.md", f"{t.stem}.tex"})
    (out / "index.md").write_text(_index(tables, sorted(n for n in written if n.endswith(".png")), excluded,
                                         unreadable, results_dir), encoding="utf-8")
    written.add("index.md")
    for stale in sorted(out.iterdir()):  # outputs of an earlier call whose runs are gone
        if stale.is_file() and GENERATED.match(stale.name) and stale.name not in written:
            stale.unlink()
    return sorted(out / n for n in written)


def _progress(what: str, started: float) -> None:
    """One line per phase of make tables (it takes about a minute), with the time so far, on stderr."""
    print(f"tables [{time.monotonic() - started:5.1f} s] {what}", file=sys.stderr, flush=True)


def _index(tables: list[Table], pngs: list[str], excluded: list[Excluded], unreadable, results_dir: Path) -> str:
    lines = ["# Tables and plots", "",
             "Generated by `make tables` (`python -m gnlorp.tables`) from the result files; edits are overwritten.", ""]
    lines += [f"- [{t.stem}.md]({t.stem}.md) ([.tex]({t.stem}.tex)): {t.title}" for t in tables]
    lines += [f"- [{p}]({p})" for p in pngs]
    if not tables:
        lines.append("- (no tables: no usable result files)")
    lines += ["", "## Left out", ""]
    if excluded:
        lines += [f"- {line}" for line in _excluded_lines(excluded)]
    else:
        lines.append("- none")
    lines += ["", "## Unreadable result files", ""]
    if unreadable:
        lines += [f"- {name}: {reason}" for name, reason in unreadable]
    else:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    """`make tables`: input errors (a --results that is not a folder, an --out that cannot be written) end in one
    `error:` line and exit 2; a record of an older schema or an unreadable file is named on one `note:` line."""
    from ..errors import run_command

    run_command(_main, argv, what="--out")


def _main(argv) -> None:
    from ..errors import UserError, one_line_argument_parser

    ap = one_line_argument_parser(prog="python -m gnlorp.tables", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"), help="folder of result files (default: results)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/tables)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="include runs from a git tree with uncommitted changes (marked † in the tables)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory table (it builds LLaMA-7B on the meta device)")
    ap.add_argument("--no-readme", action="store_true",
                    help="do not write results/README.md and README.md's results section (written only when --results "
                         "and --out are left at their defaults)")
    args = ap.parse_args(argv)
    default_folders = args.out is None and args.results == Path("results")
    if not args.results.is_dir():
        raise UserError(f"--results {str(args.results)!r} is not a folder of result files; pass the folder the runs "
                        f"wrote (results_dir, default results).")
    paths = build_tables(args.results, args.out, allow_dirty=args.allow_dirty, memory=not args.no_memory)
    runs, excluded, unreadable, _ = collect(args.results, allow_dirty=args.allow_dirty)
    for e in excluded:
        if e.reason.startswith(OLDER_RECORD):
            print(f"note: {args.results / e.file}: {e.reason}; left out of {e.group}.", file=sys.stderr)
    for name, reason in unreadable:
        print(f"note: {args.results / name}: not a usable result ({reason}); left out.", file=sys.stderr)
    print(f"{len(runs)} run(s) tabulated, {len(excluded)} left out, {len(unreadable)} unreadable file(s); "
          f"see {(args.out or args.results / 'tables') / 'index.md'}")
    if default_folders and not args.no_readme and not args.no_memory:
        from . import results_readme

        paths += results_readme.write(args.results, args.results / "tables")
    for p in paths:
        print(f"  {p}")
