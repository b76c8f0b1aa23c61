"""What every table is built from: the runs read from results/, their values, cells, labels, and the Table
(Markdown and LaTeX)."""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..identity import EXCLUDED_KEYS
from ..methods import METHODS
from ..methods import SPECS
from ..methods import is_low_rank
from ..record import load_results
from .. import lr_selection
from ..methods import label as method_label
from .published import C4_PAPER_SIZES, HEADLINE

_UNTRACKED = set(EXCLUDED_KEYS) | {"rank"}  # older records: the rank group also wrote a top-level rank

DASH = "—"

METHOD_ORDER = METHODS  # row order and labels: each method's declaration (gnlorp/methods/<name>.py)

SPREAD_NOTE = ("Ours: median over seeds ± half the range, (max − min) / 2; a cell from one run shows that run's value "
               "alone. \"—\": no run, or a number the paper does not give.")


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


def _glue_baseline(runs: list[Run]) -> float | None:
    """×100 headline score of the task's trivial baseline (GlueData.trivial_baseline), from any run's record."""
    for r in runs:
        split, metric = HEADLINE.get(r.task, ("validation", "accuracy"))
        v = (((r.record.get("baseline") or {}).get("metrics") or {}).get(split) or {}).get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return 100.0 * float(v)
    return None


def _c4_value(run: Run) -> float | None:
    try:
        v = run.record["last"]["metrics"]["validation"]["perplexity"]
    except (KeyError, TypeError):
        return None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _c4_at_step(run: Run, step: int) -> float | None:
    for e in run.record.get("eval_history") or []:
        if e.get("step") == step:
            v = ((e.get("metrics") or {}).get("validation") or {}).get("perplexity")
            if isinstance(v, (int, float)) and math.isfinite(v):
                return float(v)
    return None


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


def collect(results_dir: str | Path, allow_dirty: bool = False):
    """(usable runs, excluded runs, unreadable files, learning-rate grids) from a results folder, each sorted by
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
                if id(r) not in chosen_ids:
                    excluded.append(Excluded(r.name, r.file, _group(r), f"learning-rate grid: lr {point.lr:g} not "
                                                                        f"chosen ({grid.describe()})"))
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
    return runs, excluded, unreadable, grids


def _fmt(x: float, nd: int = 2) -> str:
    s = f"{x:.{nd}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _cell(values: list[float], nd: int = 2) -> str:
    if not values:
        return DASH
    med = statistics.median(values)
    if len(values) == 1:
        return _fmt(med, nd)
    return f"{_fmt(med, nd)} ± {_fmt((max(values) - min(values)) / 2, nd)}"


def _paper_cell(v) -> str:
    if v is None:
        return DASH
    return v if isinstance(v, str) else _fmt(float(v))


def _seeds_text(counts: list[int]) -> str:
    counts = [c for c in counts if c]
    if not counts:
        return "ours"
    lo, hi = min(counts), max(counts)
    n = str(lo) if lo == hi else f"{lo}–{hi}"
    return f"ours ({n} {'run' if hi == 1 else 'runs'})"


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    out = "".join(_TEX_ESCAPE.get(ch, ch) for ch in s)
    out = re.sub(r"`([^`]*)`", r"\\texttt{\1}", out)
    return (out.replace("±", r"$\pm$").replace("—", "---").replace("–", "--").replace("−", "$-$")
            .replace("†", r"$^\dagger$").replace("×", r"$\times$").replace("§", r"\S{}").replace("≤", r"$\le$"))


def _tex_table(caption: str, header: list[str], rows: list[list[str]], align: list[str], notes: list[str]) -> str:
    cols = "".join("l" if a == "l" else "r" for a in align)
    lines = ["% Generated by `python -m gnlorp.tables` from results/*.json; edits are overwritten.",
             r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{_tex(caption)}}}",
             rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize"]
        lines += [_tex(n) + r"\par" for n in notes]
        lines += [r"\end{minipage}"]
    lines += [r"\end{table}"]
    return "\n".join(lines) + "\n"


def _excluded_lines(excluded: list[Excluded]) -> list[str]:
    return [f"`{e.name}` ({e.file}): {e.reason}" for e in excluded]


@dataclass


class Table:
    stem: str
    title: str
    header: list[str]
    align: list[str]
    rows: list[list[str]]
    notes: list[str]                     # footnotes under the table (Markdown and LaTeX)
    extra_md: list[str] = field(default_factory=list)   # further Markdown sections (setup, left-out runs)

    def markdown(self) -> str:
        parts = [f"# {self.title}", "", _md_table(self.header, self.rows, self.align), ""]
        parts += [f"- {n}" for n in self.notes]
        for block in self.extra_md:
            parts += ["", block]
        return "\n".join(parts).rstrip("\n") + "\n"

    def latex(self) -> str:
        return _tex_table(self.title, self.header, self.rows, self.align, self.notes)


def _row_order(method: str, rank: int | None, precision: str, variant: str = "") -> tuple:
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (rank or 0, m, method, precision, variant)


def _eight_bit_label(method: str, table: str) -> str:
    own = SPECS[method].labels.eight_bit if method in SPECS else None
    return own or f"8-bit {method_label(method, table)}"


def _labels(keys: list[tuple], table: str, with_rank: bool) -> dict:
    """Row labels (`table`: glue or c4); the precision is named only where it is 8-bit or two rows would
    otherwise look the same."""
    def plain(k):
        method, rank, precision, variant = k
        text = method_label(method, table)
        if precision == "8bit":
            text = _eight_bit_label(method, table) if not with_rank else f"8-bit {text}"
        if with_rank and rank is not None:
            text += f" (rank {rank})"
        return f"{text} [{variant}]" if variant else text

    first = {k: plain(k) for k in keys}
    counts = defaultdict(int)
    for v in first.values():
        counts[v] += 1
    return {k: (v if counts[v] == 1 else f"{v} [{k[2]}]") for k, v in first.items()}


def _dirty_mark(runs: list[Run]) -> str:
    return "†" if any(r.dirty for r in runs) else ""


def _distinct(values) -> str:
    vals = sorted({v for v in values}, key=lambda v: (v is None, str(v)))
    return " / ".join("all" if v is None else str(v) for v in vals)


def _left_out_section(excluded: list[Excluded]) -> list[str]:
    if not excluded:
        return []
    return ["## Left out\n\n" + "\n".join(f"- {line}" for line in _excluded_lines(excluded))]


def _tokens(r: Run):
    t = (r.record.get("train") or {}).get("tokens")
    return f"{t:,}" if isinstance(t, int) else None


def _size_order(model: str) -> tuple:
    try:
        from ..models import llama_model_cfg

        cfg = llama_model_cfg(model)
        return (cfg.get("hidden_size", 0) * cfg.get("num_hidden_layers", 0), model)
    except Exception:
        return (math.inf, model)
