"""The PNG plots: training loss, GLUE dev score per epoch, memory, the C4 memory-perplexity frontier; deterministic
bytes."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from ..methods import SPECS
from ..methods import is_low_rank
from ..methods import label as method_label
from ..results import HEADLINE, Run, _c4_value
from .common import METHOD_ORDER, _glue_baseline, _row_order
from .published import MEMORY_CLAIMS, METRIC_LABEL, PAPER_RANK, SIZE_LABEL

_RC = {"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
       "svg.hashsalt": "gnlorp", "path.simplify": False}
_PNG_META = {"Software": None}


def _color(method: str) -> str:
    return SPECS[method].color if method in SPECS else "black"


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


def _median_curves(runs: list[Run], key_of, window: int) -> dict[tuple, tuple[list, list, list, list]]:
    """Per row: (steps, median, min, max) over its seeds of the smoothed training loss, on the steps every seed has."""
    curves: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        pts = [(p[0], p[1]) for p in (r.record.get("loss_curve") or []) if p[1] is not None and math.isfinite(p[1])]
        if pts:
            xs, ys = _smooth([p[0] for p in pts], [p[1] for p in pts], window)
            curves[key_of(r)].append(dict(zip(xs, ys)))
    out = {}
    for key, seeds in curves.items():
        steps = sorted(set.intersection(*(set(c) for c in seeds)))
        vals = [[c[s] for c in seeds] for s in steps]
        out[key] = (steps, [statistics.median(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals])
    return out


def loss_plot(path: Path, title: str, runs: list[Run], labels: dict, key_of) -> None:
    """Training loss per row (method, rank, precision, variant): the median over seeds with its min-max band. Left,
    the whole run on a log scale; right, the second half of training with the y-axis fitted to it, where the
    methods part (at full height the first steps' fall from ~10 would flatten every difference)."""
    fig = _figure(9.6, 3.8, left=0.08, right=0.99, bottom=0.13, top=0.86, wspace=0.2)
    whole, late = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    longest = max((len(r.record.get("loss_curve") or []) for r in runs), default=0)
    window = max(1, longest // 50)
    curves = _median_curves(runs, key_of, window)
    keys = sorted(curves, key=lambda k: _row_order(*k))
    last = max((c[0][-1] for c in curves.values() if c[0]), default=0)
    lows, highs = [], []
    for key in keys:
        steps, med, lo, hi = curves[key]
        method = key[0]
        style = dict(color=_color(method), lw=1.1, ls=_style(method)[0])
        whole.plot(steps, med, label=labels[key], **style)
        half = [i for i, s in enumerate(steps) if s >= last / 2]
        if half:
            xs = [steps[i] for i in half]
            late.fill_between(xs, [lo[i] for i in half], [hi[i] for i in half], color=_color(method), alpha=0.15, lw=0)
            late.plot(xs, [med[i] for i in half], marker=_style(method)[1], markevery=max(1, len(xs) // 6), ms=3.5,
                      **style)
            lows += [lo[i] for i in half]
            highs += [hi[i] for i in half]
    from matplotlib.ticker import FuncFormatter

    log = all(v > 0 for c in curves.values() for v in c[1])  # a log scale needs positive losses
    if log:
        whole.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    whole.yaxis.set_major_formatter(plain)
    whole.yaxis.set_minor_formatter(plain)
    if lows:
        pad = 0.05 * (max(highs) - min(lows) or 1.0)
        late.set_ylim(min(lows) - pad, max(highs) + pad)
    smoothing = f" (moving average of {window} points)" if window > 1 else ""
    whole.set_ylabel("training loss" + smoothing)
    whole.set_title("whole run (log scale)" if log else "whole run")
    late.set_title("second half, median over seeds and min–max band")
    for ax in (whole, late):
        ax.set_xlabel("optimizer step")
        ax.grid(True, lw=0.3, alpha=0.5)
    fig.suptitle(title)
    if keys:
        whole.legend(loc="upper right")
    _save(fig, path)


DODGE = 0.05  # epochs between neighbouring rows of a dev-metric plot


def dev_metric_plot(path: Path, title: str, runs: list[Run], labels: dict, key_of) -> None:
    """The dev metric the table reports, per epoch: per row (method, rank, precision, variant) the median over
    seeds as a line with markers and the seeds' min-max range as a bar and a band of the same colour. Rows are
    set side by side around each epoch (DODGE apart), so a row whose scores equal another's is not hidden by it.
    The task's trivial baseline (the record's `baseline`), where known, is a dotted horizontal line."""
    split, metric = HEADLINE.get(runs[0].task, ("validation", "accuracy"))
    fig = _figure(6.4, 3.8, left=0.11, right=0.98, bottom=0.13, top=0.91)
    ax = fig.add_subplot()
    rows: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        for e in r.record.get("eval_history") or []:
            v = ((e.get("metrics") or {}).get(split) or {}).get(metric)
            if e.get("epoch") is not None and isinstance(v, (int, float)) and math.isfinite(v):
                rows[key_of(r)][int(e["epoch"])].append(100.0 * v)
    keys = sorted(rows, key=lambda k: _row_order(*k))
    for i, key in enumerate(keys):
        epochs = sorted(rows[key])
        xs = [e + (i - (len(keys) - 1) / 2) * DODGE for e in epochs]
        values = [rows[key][e] for e in epochs]
        low, mid, high = [min(v) for v in values], [statistics.median(v) for v in values], [max(v) for v in values]
        ls, marker = _style(key[0])
        color = _color(key[0])
        ax.fill_between(xs, low, high, color=color, alpha=0.08, lw=0)
        ax.errorbar(xs, mid, yerr=[[m - lo for m, lo in zip(mid, low)], [hi - m for m, hi in zip(mid, high)]],
                    color=color, ls=ls, marker=marker, ms=4, lw=1.2, elinewidth=0.8, capsize=2, label=labels[key])
    baseline = _glue_baseline(runs)
    if baseline is not None:
        ax.axhline(baseline, color="0.35", ls=":", lw=1.0, label=f"trivial baseline ({baseline:.2f})")
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
    rows = [r for r in rows if not r.get("optim_library")]  # torchao's full-training rows: in the table only
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


def _analytic_peak(run: Run) -> int | None:
    """The memory model's whole-training peak (gnlorp/memory_model.py) for a C4 run's config, in bytes; None for a
    method or setting the model does not cover."""
    from ..errors import UserError
    from ..memory_model import METHODS, Setup, peak

    if run.method not in METHODS:
        return None
    try:
        c = run.config
        t, p, m, d = c["train"], c["precision"], c["method"], c.get("derived") or {}
        bf16 = (run.record.get("device") or {}).get("type") == "cuda" and p.get("cuda_param_dtype") == "bfloat16"
        s = Setup(model=c["model"], method=run.method, rank=run.rank, dtype="bf16" if bf16 else "fp32",
                  optim_bits=int(p.get("optim_bits", 32)), optim_library=p.get("optim_library"),
                  batch=int(d.get("micro_batch_size") or t["batch_size"]), seq_len=int(c["task"]["seq_len"]),
                  layerwise=bool(m.get("layerwise", False)), checkpointing=bool(t.get("activation_checkpointing")),
                  svd=m.get("svd") or "auto", proj_type=m.get("proj_type") or "std",
                  lora_dropout=m.get("lora_dropout"), proj=m.get("proj") or "random")
        return peak(s).peak
    except (UserError, KeyError, TypeError, ValueError):
        return None


def frontier_points(runs: list[Run], labels: dict, key_of) -> list[dict]:
    """One point per row (key_of(run)) whose runs recorded their optimizer-state bytes and a final perplexity:
    x = the median over seeds of memory.optimizer_state_bytes, y = the median final validation perplexity, low/high
    its seeds' min and max, peak = the memory model's analytic training peak (None where it has none)."""
    by_key = defaultdict(list)
    for r in runs:
        state, ppl = (r.record.get("memory") or {}).get("optimizer_state_bytes"), _c4_value(r)
        if isinstance(state, int) and ppl is not None:
            by_key[key_of(r)].append((r, state, ppl))
    points = []
    for key in sorted(by_key, key=lambda k: _row_order(*k)):
        triples = sorted(by_key[key], key=lambda t: t[0].seed)
        ppls = [p for _, _, p in triples]
        points.append({"key": key, "label": labels.get(key, str(key)), "method": key[0],
                       "state_bytes": statistics.median(s for _, s, _ in triples), "ppl": statistics.median(ppls),
                       "low": min(ppls), "high": max(ppls), "peak": _analytic_peak(triples[0][0])})
    return points


def _spread(ys: list[float], gap: float) -> list[float]:
    """Label heights for points at `ys` (any order): in the points' order, at least `gap` apart, moved up as little as
    that needs and then down together by the mean move, so the block of names stays centred on the points."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = list(ys)
    for a, b in zip(order, order[1:]):
        out[b] = max(out[b], out[a] + gap)
    shift = sum(o - y for o, y in zip(out, ys)) / len(ys) if ys else 0.0
    return [o - shift for o in out]


def frontier_plot(path: Path, title: str, points: list[dict]) -> None:
    """Memory against perplexity, one point per method at its chosen rate, named beside it: left, the optimizer state
    the runs measured; right, the memory model's whole-training peak at the same perplexity; bars: the seeds' range."""
    fig = _figure(10.0, 4.8, left=0.075, right=0.985, bottom=0.11, top=0.88, wspace=0.28)
    fig.suptitle(title)
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("state_bytes", "optimizer state (MiB, measured)"), ("peak", "training peak (MiB, memory model)"))
    for ax, (field, xlabel) in zip(axes, panels):
        shown = [p for p in points if p[field] is not None]
        for p in shown:
            yerr = [[p["ppl"] - p["low"]], [p["high"] - p["ppl"]]]
            ax.errorbar([p[field] / 2**20], [p["ppl"]], yerr=yerr, fmt=_style(p["method"])[1], color=_color(p["method"]),
                        capsize=3, ms=6, label=p["label"])
        ax.set_xlabel(xlabel)
        ax.grid(True, lw=0.3, alpha=0.5)
        if not shown:
            continue
        xs = [p[field] / 2**20 for p in shown]
        lo, hi = min(xs), max(xs)
        span = hi - lo or lo
        ax.set_xlim(lo - 0.08 * span, hi + 0.45 * span)  # room on the right for the names
        ylo = min(p["low"] for p in points)
        yhi = max(p["high"] for p in points)
        heights = _spread([p["ppl"] for p in shown], 0.055 * (yhi - ylo or 1.0))
        for p, x, y in zip(shown, xs, heights):
            ax.annotate(p["label"], (x, p["ppl"]), xytext=(x + 0.12 * span, y), fontsize=7, va="center",
                        color=_color(p["method"]), arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6"})
    axes[0].set_ylabel("final validation perplexity (median; bars: seeds' min–max)")
    _save(fig, path)
