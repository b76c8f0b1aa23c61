"""results/*.json -> the papers' tables (Markdown and LaTeX) and plots (PNG) under results/tables/.

  python -m gnlorp.tables                       # what `make tables` runs: --results results --out results/tables
  python -m gnlorp.tables --results DIR --out DIR [--allow-dirty] [--no-memory]

What comes out (one file per table, each with its notes; index.md lists them and every file left out):
  glue_<model>.md/.tex       GaLore Table 4 layout: rows = method (+rank), columns = the GLUE tasks run, avg;
                             the published RoBERTa-base rows beside ours, labelled "paper"
  c4_paper-sizes.md/.tex     GaLore Table 2 layout: rows = method, columns = LLaMA 60M..1B, final validation perplexity
  c4_llama_7b.md/.tex        GaLore Table 3 layout: perplexity at 40K / 80K / 120K / 150K steps
  c4_other-sizes.md/.tex     the same for sizes the papers do not have (the CPU-scale 20M LLaMA)
  memory.md/.tex, memory.png optimizer-state memory of every method, LLaMA 60M..7B, 16- and 8-bit, at the paper's
                             ranks, against the published claims (analytic: needs no results)
  loss_<...>.png             training-loss curves per method, one plot per GLUE task and model / per C4 size

Rules: a cell is the median over seeds ± half the range; a run that is not complete, or that ran from a git tree with
uncommitted changes (git.dirty), is left out and named; a file load_results cannot read is named; a published cell the
paper does not give stays "—". Same results in, same bytes out: sorted rows, fixed number formats, no timestamps,
PNGs without software/date metadata.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import lr_selection
from .identity import EXCLUDED_KEYS
from .paired import paired_difference
from .methods import METHODS, SPECS, is_low_rank
from .methods import label as method_label
from .record import load_results

_UNTRACKED = set(EXCLUDED_KEYS) | {"rank"}  # older records: the rank group also wrote a top-level rank

DASH = "—"

# ----------------------------------------------------------------------------- published numbers (PAPER_NUMBERS.md)
GLUE_TASKS = ("cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp", "wnli")  # GaLore Table 4's order, + WNLI
TASK_LABEL = {"cola": "CoLA", "stsb": "STS-B", "mrpc": "MRPC", "rte": "RTE", "sst2": "SST-2", "mnli": "MNLI",
              "qnli": "QNLI", "qqp": "QQP", "wnli": "WNLI"}
# (split, metric) of the official GLUE headline score of each task
HEADLINE = {"cola": ("validation", "matthews_correlation"), "stsb": ("validation", "pearson"),
            "mrpc": ("validation", "f1"), "qqp": ("validation", "f1"), "mnli": ("validation_matched", "accuracy"),
            "rte": ("validation", "accuracy"), "sst2": ("validation", "accuracy"), "qnli": ("validation", "accuracy"),
            "wnli": ("validation", "accuracy")}
METRIC_LABEL = {"matthews_correlation": "Matthews corr.", "pearson": "Pearson", "f1": "F1", "accuracy": "accuracy"}
# GaLore Table 4 averages these eight (no WNLI); our avg column follows it
AVG_EXCLUDED = ("wnli",)
PAPER_AVG_TASKS = ("cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp")


@dataclass(frozen=True)
class PaperRow:
    method: str
    rank: int | None
    precision: str | None   # None: matches any of ours; "8bit": only our 8-bit rows
    source: str
    values: dict            # column -> published cell text or number
    avg: float | None = None


_T4 = ("cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp")
PAPER_GLUE = (
    PaperRow("full", None, None, "GaLore Table 4", dict(zip(_T4, (62.24, 90.92, 91.30, 79.42, 94.57, 87.18, 92.33, 92.28))), 86.28),
    PaperRow("galore", 4, None, "GaLore Table 4", dict(zip(_T4, (60.35, 90.73, 92.25, 79.42, 94.04, 87.00, 92.24, 91.06))), 85.89),
    PaperRow("lora", 4, None, "GaLore Table 4", dict(zip(_T4, (61.38, 90.57, 91.07, 78.70, 92.89, 86.82, 92.18, 91.29))), 85.61),
    PaperRow("galore", 8, None, "GaLore Table 4", dict(zip(_T4, (60.06, 90.82, 92.01, 79.78, 94.38, 87.17, 92.20, 91.11))), 85.94),
    PaperRow("lora", 8, None, "GaLore Table 4", dict(zip(_T4, (61.83, 90.80, 91.90, 79.06, 93.46, 86.94, 92.25, 91.22))), 85.93),
    PaperRow("gradnormlorp", 8, None, "GradNormLoRP abstract", {}, 80.65),
    PaperRow("lora", 8, None, "GradNormLoRP abstract", {}, 79.23),
)

C4_PAPER_SIZES = ("llama_60m", "llama_130m", "llama_350m", "llama_1b")
SIZE_LABEL = {"llama_60m": "60M", "llama_130m": "130M", "llama_350m": "350M", "llama_1b": "1B", "llama_7b": "7B"}
PAPER_RANK = {"llama_60m": 128, "llama_130m": 256, "llama_350m": 256, "llama_1b": 512, "llama_7b": 1024}
_T2 = C4_PAPER_SIZES
PAPER_C4 = (  # GaLore Table 2: validation perplexity (params + optimizer-state memory estimate, BF16)
    PaperRow("full", None, None, "GaLore Table 2", dict(zip(_T2, ("34.06 (0.36G)", "25.08 (0.76G)", "18.80 (2.06G)", "15.56 (7.80G)")))),
    PaperRow("galore", None, None, "GaLore Table 2", dict(zip(_T2, ("34.88 (0.24G)", "25.36 (0.52G)", "18.95 (1.22G)", "15.64 (4.38G)")))),
    PaperRow("lora", None, None, "GaLore Table 2", dict(zip(_T2, ("34.99 (0.36G)", "33.92 (0.80G)", "25.58 (1.76G)", "19.21 (6.17G)")))),
)
PAPER_C4_RANK_ROW = dict(zip(_T2, ("128", "256", "256", "512")))
PAPER_C4_TOKENS_ROW = dict(zip(_T2, ("1.1B", "2.2B", "6.4B", "13.1B")))
STEPS_7B = (40000, 80000, 120000, 150000)
PAPER_7B = (  # GaLore Table 3: LLaMA-7B validation perplexity at 40K / 80K / 120K / 150K steps
    PaperRow("galore", None, "8bit", "GaLore Table 3 (r=1024, 18G)", dict(zip(STEPS_7B, (17.94, 15.39, 14.95, 14.65)))),
    PaperRow("full", None, "8bit", "GaLore Table 3 (26G)", dict(zip(STEPS_7B, (18.09, 15.47, 14.83, 14.61)))),
)
TOKENS_7B = dict(zip(STEPS_7B, ("5.2B", "10.5B", "15.7B", "19.7B")))

# GaLore Table 6: optimizer states (GB, BF16) at 60M / 130M / 350M / 1B
PAPER_MEMORY = {
    "full": dict(zip(_T2, (0.23, 0.51, 1.37, 5.20))),
    "galore": dict(zip(_T2, (0.13, 0.28, 0.54, 1.78))),
    "lora": dict(zip(_T2, (0.17, 0.37, 0.72, 2.38))),
}
# Published claims of optimizer-memory saving against BF16 Adam: (label, source, value, method, state bits, rank)
MEMORY_CLAIMS = (
    ("GaLore, 16-bit, LLaMA-7B r=1024: optimizer-state saving", "GaLore §5.5", 0.655, "galore", 16),
    ("8-bit GaLore: optimizer memory reduced by up to", "GaLore abstract", 0.825, "galore", 8),
    ("8-bit GradNormLoRP: optimizer memory reduced by up to", "GradNormLoRP abstract", 0.895, "gradnormlorp", 8),
)

METHOD_ORDER = METHODS  # row order and labels: each method's declaration (gnlorp/methods/<name>.py)

SPREAD_NOTE = ("Ours: median over seeds ± half the range, (max − min) / 2; a cell from one run shows that run's value "
               "alone. \"—\": no run, or a number the paper does not give.")


# ----------------------------------------------------------------------------- runs
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


# ----------------------------------------------------------------------------- formatting
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


# ----------------------------------------------------------------------------- GLUE
def glue_table(model: str, runs: list[Run], excluded: list[Excluded]) -> Table:
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
            below = vals and t in baselines and medians[t] <= baselines[t]
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
                     "cell's median does not beat it.")
    if any(r.dirty for r in runs):
        notes.append("†: the cell includes runs from a git tree with uncommitted changes (--allow-dirty).")
    return Table(f"glue_{_safe(model)}", f"GLUE, {model}: dev-set score per task (GaLore Table 4 layout)", header,
                 ["l", "l"] + ["r"] * (len(header) - 2), rows, notes,
                 [_glue_setup(tasks, runs)] + _left_out_section(excluded))


def _comparisons(keys: list[tuple]) -> list[tuple[tuple, tuple]]:
    """(a, b) row pairs whose paired difference a - b the differences table shows: GradNormLoRP against LoRA
    and GaLore, and every method against full training (same rank, precision and settings where it has one)."""
    pairs = []
    by = {(k[0], k[1], k[2], k[3]): k for k in keys}
    full = [k for k in keys if k[0] == "full"]
    for k in keys:
        if k[0] == "gradnormlorp":
            for other in ("lora", "galore"):
                if (other, k[1], k[2], k[3]) in by:
                    pairs.append((k, by[(other, k[1], k[2], k[3])]))
    for k in keys:
        if k[0] != "full":
            pairs += [(k, f) for f in full if f[2] == k[2]]
    return pairs


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

    def averages(key):
        seeds = set.intersection(*(set(scores[key][t]) for t in avg_tasks)) if avg_tasks else set()
        return {s: statistics.fmean(scores[key][t][s] for t in avg_tasks) for s in seeds}

    rows = []
    for a, b in _comparisons(keys):
        cells = []
        for t in tasks:
            d = paired_difference(scores[a][t], scores[b][t])
            cells.append(d.text() if d else DASH)
        d = paired_difference(averages(a), averages(b)) if avg_tasks else None
        rows.append([f"{labels[a]} − {labels[b]}"] + cells + ([d.text() if d else DASH] if avg_tasks else []))
    if not rows:
        return None
    header = ["Difference"] + [TASK_LABEL.get(t, t) for t in tasks] + (["avg"] if avg_tasks else [])
    notes = ["Cells: mean over seeds of the paired difference of scores ×100 (runs with the same seed share data "
             "order and subset), [2.5%, 97.5%] percentile bootstrap interval of that mean over seeds "
             "(gnlorp/paired.py: every resample enumerated up to 6 seeds; with 3 seeds it lies just inside the range "
             "of the per-seed differences); \"—\": fewer than two seeds in common."]
    if avg_tasks:
        notes.append(f"avg: per seed, the mean over {', '.join(TASK_LABEL[t] for t in avg_tasks)}, then paired.")
    return Table(f"glue_{_safe(model)}_differences", f"GLUE, {model}: paired differences between methods",
                 header, ["l"] + ["r"] * (len(header) - 1), rows, notes)


def _distinct(values) -> str:
    vals = sorted({v for v in values}, key=lambda v: (v is None, str(v)))
    return " / ".join("all" if v is None else str(v) for v in vals)


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


def _left_out_section(excluded: list[Excluded]) -> list[str]:
    if not excluded:
        return []
    return ["## Left out\n\n" + "\n".join(f"- {line}" for line in _excluded_lines(excluded))]


# ----------------------------------------------------------------------------- C4
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
    rows = []
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
    if paper:
        notes.append(f"paper: published numbers ({paper_note}); " + (
            "GaLore's cells add the parameter + optimizer-state memory estimate (BF16) in parentheses."
            if not seven else "8-bit GaLore at rank 1024 and 8-bit Adam; tokens per column as published."))
    elif not seven:
        notes.append("The papers have no model of these sizes, so no published numbers sit beside these rows; "
                     "GaLore Table 2's smallest model is LLaMA-60M (full-rank perplexity 34.06).")
    if any(r.dirty for r in runs):
        notes.append("†: the cell includes runs from a git tree with uncommitted changes (--allow-dirty).")
    title = {"c4_paper-sizes": "C4 pre-training, LLaMA 60M–1B: validation perplexity (GaLore Table 2 layout)",
             "c4_llama_7b": "C4 pre-training, LLaMA-7B: validation perplexity by step (GaLore Table 3 layout)",
             "c4_other-sizes": "C4 pre-training, model sizes the papers do not have: validation perplexity "
                               "(GaLore Table 2 layout)"}[stem]
    return Table(stem, title, header, ["l", "l"] + ["r"] * (len(columns) + tuned), rows, notes,
                 _left_out_section(excluded))


def lr_grid_table(stem: str, grids: list) -> Table:
    """Every point of every learning-rate grid of a table: its selection score (what chose) and its reported
    score (what the table shows), so the choice can be checked."""
    glue = stem.startswith("glue_")
    table = "glue" if glue else "c4"
    keys = sorted(grids, key=lambda g: (g.key[1], _row_order(g.key[3], g.key[4], g.key[5])))
    labels = _labels(sorted({(g.key[3], g.key[4], g.key[5], "") for g in keys}, key=lambda k: _row_order(*k)),
                     table, with_rank=glue)
    rows = []
    for g in keys:
        label = labels[(g.key[3], g.key[4], g.key[5], "")]
        where = TASK_LABEL.get(g.key[1], g.key[1]) if glue else SIZE_LABEL.get(g.key[2], g.key[2])
        for p in g.points:
            runs = sorted(p.runs, key=lambda r: r.seed)
            sel = [lr_selection.selection_loss(r.record, p.metric) for r in runs]
            sel = [(-100.0 * v if glue else v) for v in sel if v is not None]
            reported = [v for v in (_glue_value(r) if glue else _c4_value(r) for r in runs) if v is not None]
            state = "; ".join(f"seed {r.seed} {status}" for r, status in sorted(p.failed, key=lambda f: f[0].seed))
            rows.append([label, where, f"{p.lr:g}", str(len(runs) + len(p.failed)),
                         _cell(sel, 2 if glue else 4) if runs else DASH, _cell(reported) if runs else DASH,
                         ("**chosen**" if p.lr == g.chosen else "") + (f" ({state})" if state else "")])
    if glue:
        notes = ["Selection score: the task's headline metric ×100 on train rows held out of training "
                 "(task.selection_samples) at the run's best epoch there, median over seeds ± half the range; the "
                 "chosen rate has the highest (a rate with a failed seed is never chosen).",
                 "Dev score: the headline metric ×100 on the dev split at that same epoch, as in the main table "
                 "(shown for every rate; neither the rate nor the epoch is chosen on it)."]
        header = ["Method", "Task", "lr", "Runs", "Selection score", "Dev score", ""]
    else:
        notes = ["Selection loss: mean cross-entropy on the selection slice at the last evaluation, median over "
                 "seeds ± half the range; the chosen rate has the lowest (a rate with a failed seed is never chosen).",
                 "Validation perplexity: the reported slice, as in the main table (shown for every rate, chosen on "
                 "the other slice)."]
        header = ["Method", "Model", "lr", "Runs", "Selection loss", "Validation perplexity", ""]
    return Table(f"{stem}_lr_grid", f"Learning-rate grids of {stem}.md: " + header[4].lower() + " and "
                 + header[5].lower(), header, ["l", "l", "r", "r", "r", "r", "l"], rows, notes)


def _tokens(r: Run):
    t = (r.record.get("train") or {}).get("tokens")
    return f"{t:,}" if isinstance(t, int) else None


def _size_order(model: str) -> tuple:
    try:
        from .models import llama_model_cfg

        cfg = llama_model_cfg(model)
        return (cfg.get("hidden_size", 0) * cfg.get("num_hidden_layers", 0), model)
    except Exception:
        return (math.inf, model)


# ----------------------------------------------------------------------------- memory
def memory_tables(rows: list[dict]) -> Table:
    """GaLore Table 6 style: optimizer-state GB per method and state precision at the paper's rank of each size,
    the published Table 6 numbers beside, then the published saving claims against ours."""
    sizes = [s for s in ("llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b") if any(r["model"] == s for r in rows)]
    by = {(r["model"], r["method"], r["rank"], r["state_bits"]): r for r in rows}
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    header = ["Method", "States", "Source"] + [f"{SIZE_LABEL[s]} (r={PAPER_RANK[s]})" for s in sizes]
    out = []
    for m in methods:
        for bits in (16, 8):
            cells = []
            for s in sizes:
                r = by.get((s, m, PAPER_RANK[s] if is_low_rank(m) else None, bits))
                cells.append(DASH if r is None else f"{r['state_bytes'] / 1e9:.2f} GB ({100 * r['saving_vs_bf16_adamw']:.1f}%)")
            out.append([method_label(m, 'memory'), f"{bits}-bit", "ours (analytic)"] + cells)
            if bits == 16 and m in PAPER_MEMORY:
                out.append([method_label(m, 'memory'), "16-bit", "paper (GaLore Table 6)"]
                           + [_paper_cell(PAPER_MEMORY[m].get(s)) + ("" if s not in PAPER_MEMORY[m] else " GB") for s in sizes])

    others = [m for m in methods if any(r.get("other_bytes") for r in rows if r["method"] == m)]
    other_rows = []
    for m in others:
        for where, text in (("device", "on the device"), ("cpu", "CPU memory")):
            cells = [by.get((s, m, PAPER_RANK[s] if is_low_rank(m) else None, 16)) for s in sizes]
            other_rows.append([method_label(m, 'memory'), text] + [
                DASH if r is None or "other_bytes" not in r else f"{r['other_bytes'][where] / 1e9:.2f} GB" for r in cells])

    ranks = sorted({r["rank"] for r in rows if r["rank"] is not None and r["model"] == "llama_7b"})
    claims = []
    for label, source, value, method, bits in MEMORY_CLAIMS:
        at = by.get(("llama_7b", method, 1024, bits))
        reach = [k for k in ranks if (r := by.get(("llama_7b", method, k, bits))) and r["saving_vs_bf16_adamw"] >= value]
        claims.append([label, source, f"{100 * value:.1f}%",
                       f"{100 * at['saving_vs_bf16_adamw']:.1f}%" if at else DASH,
                       f"r ≤ {max(reach)}" if reach else (DASH if not ranks else f"none of r = {', '.join(map(str, ranks))}")])
    sections = ["## Published claims against ours\n\n" + _md_table(
        ["Claim", "Source", "Published", "Ours, 7B r=1024", "Ours at 7B reach it at"], claims, ["l", "l", "r", "r", "r"])]
    if other_rows:
        sections.append("## Memory kept outside the optimizer state (BF16, at the paper's ranks)\n\n"
                        "Not optimizer state, so not in the figures above: SwitchLoRA's candidate pools (min(m, n) "
                        "vectors per factor and layer, in CPU memory by default) and its swap bookkeeping.\n\n"
                        + _md_table(["Method", "Where"] + [f"{SIZE_LABEL[s]} (r={PAPER_RANK[s]})" for s in sizes],
                                    other_rows, ["l", "l"] + ["r"] * len(sizes)))
    if ranks:
        by_rank = []
        for m in [m for m in methods if is_low_rank(m)]:
            for bits in (16, 8):
                cells = [by.get(("llama_7b", m, k, bits)) for k in ranks]
                by_rank.append([method_label(m, 'memory'), f"{bits}-bit"] + [
                    DASH if r is None else f"{r['state_bytes'] / 1e9:.2f} GB ({100 * r['saving_vs_bf16_adamw']:.1f}%)"
                    for r in cells])
        sections.append("## LLaMA-7B by rank (saving against BF16 AdamW in parentheses)\n\n" + _md_table(
            ["Method", "States"] + [f"r={k}" for k in ranks], by_rank, ["l", "l"] + ["r"] * len(ranks)))
    notes = [
        "Optimizer-state bytes from gnlorp.memory.llama_memory_table (METHOD.md's formulas, checked against the real "
        "optimizer tensors in tests/unit/test_memory.py), in GB = 10^9 bytes as in GaLore Table 6; in parentheses the saving "
        "against BF16 AdamW on the same model. Embeddings, norms and the LM head keep dense AdamW states for every "
        "method; LoRA's frozen weights are not optimizer state.",
        "16-bit: BF16 moments and projectors; 8-bit: blockwise 8-bit moments (bitsandbytes; tensors under 4096 "
        "elements keep 32-bit moments), projectors in BF16.",
        "paper: GaLore Table 6 gives optimizer states at 60M–1B only; 7B and GradNormLoRP are not given (\"—\").",
    ]
    return Table("memory", "Optimizer-state memory, LLaMA 60M–7B at the paper's ranks", header,
                 ["l", "l", "l"] + ["r"] * len(sizes), out, notes, sections)


# ----------------------------------------------------------------------------- plots
_RC = {"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
       "svg.hashsalt": "gnlorp", "path.simplify": False}
_PNG_META = {"Software": None}


def _color(method: str) -> str:
    return SPECS[method].color if method in SPECS else "#9467bd"


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _style(method: str) -> tuple[str, str]:
    """(line style, marker) of a method: distinct for the registry's methods, so no line hides another's."""
    i = list(SPECS).index(method) if method in SPECS else len(SPECS)
    return _STYLES[i % len(_STYLES)], _MARKERS[i % len(_MARKERS)]


def _figure(w: float, h: float, **margins):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    fig.subplots_adjust(**margins)  # fixed margins: same layout every time, and half the drawing of a layout engine
    return fig


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png", metadata=_PNG_META)


def _smooth(xs: list, ys: list, window: int) -> tuple[list, list]:
    if window <= 1 or len(ys) < window:
        return xs, ys
    out, acc = [], sum(ys[:window])
    out.append(acc / window)
    for i in range(window, len(ys)):
        acc += ys[i] - ys[i - window]
        out.append(acc / window)
    return xs[window - 1:], out


def loss_plot(path: Path, title: str, runs: list[Run], labels: dict, key_of) -> None:
    fig = _figure(6.4, 3.8, left=0.11, right=0.98, bottom=0.13, top=0.91)
    ax = fig.add_subplot()
    seen = set()
    longest = max((len(r.record.get("loss_curve") or []) for r in runs), default=0)
    window = max(1, longest // 50)
    for r in sorted(runs, key=lambda r: (_row_order(*key_of(r)), r.seed)):
        pts = [(p[0], p[1]) for p in (r.record.get("loss_curve") or []) if p[1] is not None and math.isfinite(p[1])]
        if not pts:
            continue
        xs, ys = _smooth([p[0] for p in pts], [p[1] for p in pts], window)
        key = key_of(r)
        label = labels[key] if key not in seen else None
        seen.add(key)
        ax.plot(xs, ys, color=_color(r.method), lw=1.0, alpha=0.85, label=label, ls=_style(r.method)[0])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss" + (f" (moving average of {window} points)" if window > 1 else ""))
    ax.set_title(title)
    ax.grid(True, lw=0.3, alpha=0.5)
    if seen:
        ax.legend(loc="upper right")
    _save(fig, path)


def dev_metric_plot(path: Path, title: str, runs: list[Run], labels: dict, key_of) -> None:
    """The dev metric the table reports, per epoch: per row (method, rank, precision, variant) the median over
    seeds as a line with markers, and the seeds' min-max range as a band of the same colour."""
    split, metric = HEADLINE.get(runs[0].task, ("validation", "accuracy"))
    fig = _figure(6.4, 3.8, left=0.11, right=0.98, bottom=0.13, top=0.91)
    ax = fig.add_subplot()
    rows: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for e in r.record.get("eval_history") or []:
            v = ((e.get("metrics") or {}).get(split) or {}).get(metric)
            if e.get("epoch") is not None and isinstance(v, (int, float)) and math.isfinite(v):
                rows[key_of(r)][int(e["epoch"])].append(100.0 * v)
    for key in sorted(rows, key=lambda k: _row_order(*k)):
        epochs = sorted(rows[key])
        values = [rows[key][e] for e in epochs]
        ls, marker = _style(key[0])
        color = _color(key[0])
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.12, lw=0)
        ax.plot(epochs, [statistics.median(v) for v in values], color=color, ls=ls, marker=marker, ms=4, lw=1.2,
                label=labels[key])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{METRIC_LABEL.get(metric, metric)} ×100 ({split})")
    ax.set_title(title)
    ax.grid(True, lw=0.3, alpha=0.5)
    if rows:
        ax.legend(loc="best", fontsize="small")
    _save(fig, path)


def memory_plot(path: Path, rows: list[dict]) -> None:
    sizes = [s for s in ("llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b") if any(r["model"] == s for r in rows)]
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    by = {(r["model"], r["method"], r["rank"], r["state_bits"]): r for r in rows}
    fig = _figure(10.0, 4.4, left=0.065, right=0.99, bottom=0.14, top=0.86, wspace=0.2)
    ax_gb, ax_pct = fig.subplots(1, 2)
    n = len(methods) * 2
    width = 0.8 / max(n, 1)
    for i, m in enumerate(methods):
        for j, bits in enumerate((16, 8)):
            gb, pct = [], []
            for s in sizes:
                r = by.get((s, m, PAPER_RANK[s] if is_low_rank(m) else None, bits))
                gb.append(r["state_bytes"] / 2**30 if r else 0.0)  # GiB, as `make memory` and the README
                pct.append(100 * r["saving_vs_bf16_adamw"] if r else 0.0)
            xs = [k + (2 * i + j - (n - 1) / 2) * width for k in range(len(sizes))]
            style = dict(width=width, color=_color(m), edgecolor="black", linewidth=0.4,
                         hatch="///" if bits == 8 else None, label=f"{method_label(m, 'memory')} {bits}-bit")
            ax_gb.bar(xs, gb, **style)
            ax_pct.bar(xs, pct, **style)
    ticks = [f"{SIZE_LABEL[s]}\nr={PAPER_RANK[s]}" for s in sizes]
    for ax in (ax_gb, ax_pct):
        ax.set_xticks(range(len(sizes)), ticks)
        ax.grid(True, axis="y", lw=0.3, alpha=0.5)
    ax_gb.set_yscale("log")
    ax_gb.set_ylabel("optimizer state (GiB, log scale)")
    ax_gb.set_title("Optimizer-state memory per method and size")
    ax_pct.set_ylabel("saving vs BF16 AdamW (%)")
    ax_pct.set_title("Saving vs BF16 AdamW; lines: published claims (LLaMA-7B)")
    claim_style = {"galore": "#c85a00", "gradnormlorp": "#1a7a1a"}
    for label, source, value, method, bits in MEMORY_CLAIMS:
        color = claim_style.get(method, "black")
        ax_pct.axhline(100 * value, color=color, ls=":" if bits == 16 else "--", lw=1.2)
        ax_pct.text(-0.45, 100 * value + 0.8, f"published: {method_label(method, 'memory')} {bits}-bit {100 * value:.1f}% "
                    f"({source})", color=color, fontsize=7, va="bottom", ha="left",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0}, zorder=5)
    ax_pct.set_xlim(-0.5, len(sizes) - 0.5)
    ax_pct.set_ylim(0, 100)
    ax_gb.legend(loc="upper left", ncols=2, fontsize=7)
    fig.suptitle("LLaMA 60M–7B optimizer states at the paper's ranks (analytic, gnlorp.memory)", fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------- driver
GENERATED = re.compile(r"^(glue_.*|c4_.*|memory|index|loss_.*)\.(md|tex|png)$")


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
        for stem in sorted(groups):
            rs = groups[stem]
            if stem.startswith("glue_"):
                model = rs[0].model
                table = glue_table(model, rs, excluded_by_group.get(stem, []))
                stem_grids = [g for g in grids if _group(g.any_run()) == stem]
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
                                    "(median over seeds, band: min-max)", trs, labels,
                                    lambda r: (r.method, r.rank, r.precision, r.variant))
                    written.add(name)
            else:
                stem_grids = [g for g in grids if _group(g.any_run()) == stem]
                table = c4_table(stem, rs, excluded_by_group.get(stem, []), stem_grids)
                if stem_grids:
                    tables.append(lr_grid_table(stem, stem_grids))
                key_of_map, keys = _c4_keys(rs)
                labels = _labels(keys, "c4", with_rank=any(k[1] is not None for k in keys))
                for model in sorted({r.model for r in rs}, key=_size_order):
                    mrs = [r for r in rs if r.model == model]
                    name = f"loss_c4_{_safe(model)}.png"
                    loss_plot(out / name, f"C4 pre-training, {model}: training loss per method", mrs, labels,
                              lambda r, k=key_of_map: k[id(r)])
                    written.add(name)
            tables.append(table)
        if memory:
            if memory_rows is None:
                from .memory import llama_memory_table

                memory_rows = llama_memory_table()
            tables.append(memory_tables(memory_rows))
            memory_plot(out / "memory.png", memory_rows)
            written.add("memory.png")

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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"), help="folder of result files (default: results)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/tables)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="include runs from a git tree with uncommitted changes (marked † in the tables)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory table (it builds LLaMA-7B on the meta device)")
    args = ap.parse_args(argv)
    paths = build_tables(args.results, args.out, allow_dirty=args.allow_dirty, memory=not args.no_memory)
    runs, excluded, unreadable, _ = collect(args.results, allow_dirty=args.allow_dirty)
    print(f"{len(runs)} run(s) tabulated, {len(excluded)} left out, {len(unreadable)} unreadable file(s); "
          f"see {(args.out or args.results / 'tables') / 'index.md'}")
    for p in paths:
        print(f"  {p}")


if __name__ == "__main__":
    main()
