"""What every benchmark shares: timing with its own noise, the environment a figure was taken in, the
result file, the Markdown table, and the check that a rerun agrees with the last one.

Timings are `time.perf_counter` differences after warmup (with `torch.cuda.synchronize()` around them only
on CUDA). Every figure is a `stats` dict: median, min, max, quartiles, IQR and the raw samples, so a reader
sees the noise next to the number. Candidates that are compared are timed round-robin (one sample of each
in turn, repeated), so a burst of load from another process lands on all of them, and their ratio is taken
per round (`paired_ratio`) before the median.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

SCHEMA_VERSION = 1
MIN_SAMPLES_TO_COMPARE = 3
RESULTS_DIR = Path("results") / "bench"
EXTRA_PACKAGES = ("galore-torch", "numpy")


# ----------------------------------------------------------------------------------------- statistics
def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an already sorted list."""
    if len(sorted_xs) == 1:
        return float(sorted_xs[0])
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return float(sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo))


def stats(samples: Iterable[float]) -> dict:
    """Median and spread of `samples` (seconds, or any unit): the unit of every figure in a result file."""
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError("stats() needs at least one sample")
    s = sorted(xs)
    q1, q3 = _quantile(s, 0.25), _quantile(s, 0.75)
    med = float(statistics.median(s))
    return {
        "median": med, "min": s[0], "max": s[-1], "q1": q1, "q3": q3, "iqr": q3 - q1,
        "mean": float(statistics.fmean(s)), "n": len(s),
        "rel_spread": (s[-1] - s[0]) / med if med else 0.0,  # (max - min) / median
        "samples": xs,
    }


def paired_ratio(numer: Sequence[float], denom: Sequence[float]) -> dict:
    """stats of numer[i] / denom[i]: two candidates timed in the same round share that round's load."""
    if len(numer) != len(denom):
        raise ValueError(f"paired_ratio needs equally many samples, got {len(numer)} and {len(denom)}")
    return stats(a / b for a, b in zip(numer, denom))


def amortized(refresh: Sequence[float], steady: Sequence[float], T: int) -> dict:
    """stats of (refresh + (T - 1) * steady) / T, pairing the i-th samples of both."""
    return stats((r + (T - 1) * s) / T for r, s in zip(refresh, steady))


# ----------------------------------------------------------------------------------------- timing
def sync_for(device: torch.device | str) -> Callable[[], None]:
    """torch.cuda.synchronize on CUDA, nothing elsewhere (CPU ops are synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_once(fn: Callable[[], object], sync: Callable[[], None] = lambda: None, inner: int = 1) -> tuple[float, float]:
    """(wall, cpu) seconds per call of `fn`, averaged over `inner` back-to-back calls: wall from
    time.perf_counter, cpu from time.process_time (this process's CPU time, all threads; with one thread
    it is barely affected by other processes competing for the cores, so it shows the work done)."""
    sync()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner


class Samples:
    """Wall and CPU seconds of repeated timings of one candidate."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def add(self, sample: tuple[float, float]) -> None:
        self.wall.append(float(sample[0]))
        self.cpu.append(float(sample[1]))

    def __len__(self) -> int:
        return len(self.wall)

    def stats(self) -> dict:
        return {"wall": stats(self.wall), "cpu": stats(self.cpu)}


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] = lambda: None,
            inner: int = 1) -> Samples:
    """`repeats` timed samples of `fn` (each the mean of `inner` calls) after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    out = Samples()
    for _ in range(repeats):
        out.add(time_once(fn, sync, inner))
    return out


def round_robin(candidates: dict[str, Callable[[], tuple[float, float]]], repeats: int) -> dict[str, Samples]:
    """Call each candidate once per round, `repeats` rounds; each call returns its own (wall, cpu) seconds."""
    samples = {name: Samples() for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            samples[name].add(fn())
    return samples


def calls_for(fn: Callable[[], object], target_s: float, sync: Callable[[], None] = lambda: None, cap: int = 1000) -> int:
    """How many back-to-back calls of `fn` last about `target_s` (one timed call to find out)."""
    wall, _ = time_once(fn, sync)
    return max(1, min(cap, int(round(target_s / max(wall, 1e-9)))))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------- environment
def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads (None keeps torch's default); returns the number in use."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment(name: str | None = None, argv: Sequence[str] | None = None) -> dict:
    """Where and how a figure was taken: device, threads, packages, git sha, command line, load.
    `command` is the command that reruns this benchmark with the same arguments (`argv`, default the
    process's own); `process_argv` is how the process itself was started (e.g. the whole suite)."""
    from .. import sysinfo

    packages = sysinfo.package_versions()
    for dist in EXTRA_PACKAGES:
        try:
            packages[dist] = metadata.version(dist)
        except Exception:
            packages[dist] = None
    return {
        "device": sysinfo.device_info(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "packages": packages,
        "git": sysinfo.git_info(),
        "command": shlex.join(["python", "-m", f"gnlorp.bench.{name}" if name else _module_name()]
                              + list(sys.argv[1:] if argv is None else argv)),
        "process_argv": [Path(sys.executable).name] + list(sys.argv),
        "platform": platform.platform(),
        "loadavg_at_start": _loadavg(),
    }


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) or "gnlorp.bench"


def common_args(parser: argparse.ArgumentParser, repeats: int, warmup: int) -> argparse.ArgumentParser:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: reproducible on a shared CPU; 0 keeps torch's default)")
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed samples per figure (default {repeats})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls first (default {warmup})")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where <name>.json goes (default results/bench)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no JSON")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def start(args, name: str | None = None, argv: Sequence[str] | None = None) -> dict:
    """Apply the shared flags (threads, seed) and return the environment record."""
    set_threads(None if args.threads == 0 else args.threads)
    torch.manual_seed(args.seed)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} asked for, but CUDA is not available here")
    return environment(name, argv)


# ----------------------------------------------------------------------------------------- result files
def result(name: str, env: dict, settings: dict, rows: list[dict], started: float, **extra) -> dict:
    env = dict(env)
    env["loadavg_at_end"] = _loadavg()
    payload = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": name,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - started,
        "env": env,
        "settings": settings,
        "rows": rows,
    }
    payload.update(extra)
    return payload


def write(payload: dict, out_dir: Path) -> Path:
    from ..record import atomic_write_json

    path = Path(out_dir) / f"{payload['benchmark']}.json"
    atomic_write_json(path, payload)
    return path


def load_previous(name: str, out_dir: Path) -> dict | None:
    path = Path(out_dir) / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stats_leaves(obj, prefix=()):
    """(path, stats) for every stats dict nested in `obj`."""
    if isinstance(obj, dict):
        if {"median", "min", "max", "samples"} <= obj.keys():
            yield prefix, obj
            return
        for k, v in obj.items():
            yield from _stats_leaves(v, prefix + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _stats_leaves(v, prefix + (str(i),))


def _is_ratio(section: str, path: Sequence[str]) -> bool:
    """Ratios of two candidates timed in the same round cancel the machine's load; absolute times do not."""
    return section != "rows" or any("ratio" in p or "over_" in p for p in path)


# settings that say where the output went, not what was measured: a run written elsewhere still compares
WHERE_NOT_WHAT = {"out_dir", "no_write"}


def compare_runs(previous: dict | None, current: dict, keys: dict[str, Callable[[dict], str]]) -> dict | None:
    """Does this run agree with the last one? For every figure present in both (rows of each section
    matched by its key function) with at least MIN_SAMPLES_TO_COMPARE samples in each run, they agree when
    their [min, max] ranges overlap: the difference is within the noise either run shows. Ratios (the
    figures the targets are about) and absolute times are counted apart: on a shared machine the load can
    change between two runs, which moves absolute times by more than the noise within either run, while
    ratios of candidates timed back to back are not moved by it."""
    if not previous or previous.get("benchmark") != current.get("benchmark"):
        return None
    old_s, new_s = previous.get("settings") or {}, current.get("settings") or {}
    differing = sorted(k for k in (old_s.keys() & new_s.keys()) - WHERE_NOT_WHAT if old_s[k] != new_s[k])  # a new flag is no change
    if differing:
        return {"comparable": False, "reason": "settings differ from the previous run: " + ", ".join(differing)}
    counts = {"ratio": [0, 0], "absolute": [0, 0]}  # [checked, agreeing]
    skipped, disagree = 0, []
    for section, key in keys.items():
        old = {key(r): dict(_stats_leaves(r)) for r in previous.get(section) or []}
        for row in current.get(section) or []:
            before = old.get(key(row))
            if before is None:
                continue
            for path, s in _stats_leaves(row):
                o = before.get(path)
                if o is None:
                    continue
                if min(s["n"], o["n"]) < MIN_SAMPLES_TO_COMPARE:  # one or two samples are no noise estimate
                    skipped += 1
                    continue
                kind = "ratio" if _is_ratio(section, path) else "absolute"
                counts[kind][0] += 1
                if s["min"] > o["max"] or o["min"] > s["max"]:
                    disagree.append({"row": f"{section}:{key(row)}", "figure": ".".join(path), "kind": kind,
                                     "previous": [o["min"], o["median"], o["max"]],
                                     "current": [s["min"], s["median"], s["max"]]})
                else:
                    counts[kind][1] += 1
    checked = counts["ratio"][0] + counts["absolute"][0]
    return {
        "comparable": True, "previous_finished_at": previous.get("finished_at"),
        "figures_checked": checked, "figures_agreeing": counts["ratio"][1] + counts["absolute"][1],
        "ratios_checked": counts["ratio"][0], "ratios_agreeing": counts["ratio"][1],
        "absolute_checked": counts["absolute"][0], "absolute_agreeing": counts["absolute"][1],
        "figures_skipped_few_samples": skipped, "disagreements": disagree,
    }


def report_comparison(comparison: dict | None) -> str:
    if comparison is None:
        return "No previous result to compare with."
    if not comparison["comparable"]:
        return f"Not compared with the previous run: {comparison['reason']}."
    c = comparison
    line = (f"Against the previous run ({c['previous_finished_at']}), figures whose [min, max] ranges overlap: "
            f"ratios {c['ratios_agreeing']}/{c['ratios_checked']}, absolute times {c['absolute_agreeing']}/"
            f"{c['absolute_checked']} (absolute times also move with the machine's load between runs).")
    shown = sorted(c["disagreements"], key=lambda d: d["kind"] != "ratio")[:10]
    for d in shown:
        line += (f"\n  differs ({d['kind']}): {d['row']} {d['figure']}: previous {_g(d['previous'][1])} "
                 f"[{_g(d['previous'][0])}, {_g(d['previous'][2])}], now {_g(d['current'][1])} "
                 f"[{_g(d['current'][0])}, {_g(d['current'][2])}]")
    return line


def finish(payload: dict, args, keys: dict[str, Callable[[dict], str]], tables: list[str]) -> dict:
    """Print the tables, compare with the previous result file (sections and row keys in `keys`), write
    the new one."""
    comparison = compare_runs(load_previous(payload["benchmark"], args.out_dir), payload, keys)
    payload["reproducibility"] = comparison
    print("\n\n".join(tables))
    env = payload["env"]
    print(f"\n{env['device']['type']} ({env['device']['name']}), torch threads {env['torch_threads']}, "
          f"load average {env['loadavg_at_start']} -> {env['loadavg_at_end']}, {payload['wall_s']:.0f} s.")
    print(report_comparison(comparison))
    if not args.no_write:
        path = write(payload, args.out_dir)
        print(f"wrote {path}")
    return payload


# ----------------------------------------------------------------------------------------- formatting
def _g(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt(s: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    """'median [min, max]' of a stats dict, times `scale` (1e3 for ms)."""
    if s is None:
        return "-"

    def f(x):
        x *= scale
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"

    return f"{f(s['median'])} [{f(s['min'])}, {f(s['max'])}]"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
