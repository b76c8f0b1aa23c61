"""results/<run>.json: the single source of truth for one run.

A run writes its record atomically many times (periodic ``incomplete`` saves, then ``complete`` or
``failed``); a reader never sees a half-written file. ``load_results`` reads a whole results
directory for the table builder and reports, rather than raises on, every file it cannot use.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gnlorp.errors import UserError, os_error_cause

SCHEMA_VERSION = 1
STATUSES = ("complete", "incomplete", "failed")
MAX_CURVE_POINTS = 2000
_CHUNK = 1 << 20  # bytes per os.write call

# Keys every schema-1 record has, with the JSON type each must have (None allowed where listed).
_REQUIRED: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "run_name": (str,),
    "status": (str,),
    "config": (dict,),
    "git": (dict,),
    "versions": (dict,),
    "device": (dict,),
    "started_at": (str,),
    "finished_at": (str, type(None)),
    "eval": (dict,),
    "best": (dict,),
    "last": (dict,),
    "eval_history": (list,),
    "train": (dict,),
    "memory": (dict,),
    "loss_curve": (list,),
}


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(allow_nan=False, sort_keys=True)`` accepts.

    NaN/Inf floats become None; tuples and sets become lists; mapping keys become strings; numpy
    and torch scalars become Python numbers; Paths and anything else unknown become ``str(obj)``
    (a results file must never be lost to one odd value).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or (
        isinstance(obj, Sequence) and not isinstance(obj, (bytes, bytearray, memoryview))
    ):  # also OmegaConf ListConfig
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)  # numpy / torch scalars (0-d arrays and 1-element tensors)
    if callable(item):
        try:
            if getattr(obj, "ndim", 0) == 0 or getattr(obj, "size", None) == 1:
                return to_jsonable(item())
        except Exception:
            pass
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        try:
            return to_jsonable(tolist())
        except Exception:
            pass
    return str(obj)


def dumps(obj: Any) -> str:
    """The canonical text of a results file: sorted keys, indent 2, no NaN, trailing newline."""
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def fsync_dir(directory: Path) -> None:
    """Make a replace in `directory` durable (the result file's and the checkpoint's atomic writes)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the replace itself is still atomic
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, setting: str = "results_dir") -> None:
    """Write ``data`` to ``path`` so that ``path`` always holds either the old or the new content.

    Writes ``<path>.tmp-<pid>`` in the same directory, fsyncs it, then ``os.replace``s it over
    ``path`` (and fsyncs the directory). A crash leaves at most the tmp file behind. A failed write
    (disk full, read-only folder, ...) removes the tmp file, keeps the old content and raises a one-line
    UserError naming the path, the cause and the fix (`setting`: the config key choosing the folder).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    view = memoryview(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written : written + _CHUNK])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            cause, fix = os_error_cause(exc, setting)
            raise UserError(f"could not write {path}: {cause}; {fix}.") from None
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``atomic_write_bytes`` of ``dumps(obj)``: indent 2, sorted keys, NaN/Inf written as null."""
    atomic_write_bytes(path, dumps(obj).encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------


def thin_curve(points: list, max_points: int = MAX_CURVE_POINTS) -> list:
    """Every k-th point (k as small as fits), always keeping the first and the last: <= max_points."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    n = len(points)
    if n <= max_points:
        return list(points)
    k = math.ceil(n / (max_points - 1))
    out = list(points[::k])
    if (n - 1) % k:
        out.append(points[-1])
    return out


class _Curve:
    """Bounded (step, value) series: keeps every ``stride``-th point, doubling the stride whenever
    more than ``2 * max_points`` are held, plus always the latest point."""

    def __init__(self, max_points: int = MAX_CURVE_POINTS):
        self.max_points = max_points
        self.stride = 1
        self.count = 0
        self.points: list[list] = []
        self.latest: list | None = None

    def add(self, step: int, value: float | None) -> None:
        point = [int(step), value]
        if self.count % self.stride == 0:
            self.points.append(point)
            if len(self.points) > 2 * self.max_points:
                self.points = self.points[::2]
                self.stride *= 2
        self.count += 1
        self.latest = point

    def export(self) -> list[list]:
        points = list(self.points)
        if self.latest is not None and (not points or points[-1] is not self.latest):
            points.append(self.latest)
        return thin_curve(points, self.max_points)


# ---------------------------------------------------------------------------------------------
# Run record
# ---------------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_run_name(run_name: str) -> str:
    if not isinstance(run_name, str) or not run_name.strip():
        raise UserError(f"Run name {run_name!r} is empty; set run_name to a non-empty string.")
    if "/" in run_name or "\\" in run_name or run_name.startswith(".") or "\0" in run_name:
        raise UserError(
            f"Run name {run_name!r} is not a plain file name; use a name without '/', '\\' "
            "or a leading '.'."
        )
    return run_name


class RunRecord:
    """The result of one run, kept in memory and written to ``results_dir/<run_name>.json``.

    Nothing is created on disk until ``write``. Git state, package versions and the device are
    captured when the record is created (the state the run started from).
    ``clock`` (returns an aware UTC datetime) exists so tests can make timestamps deterministic.
    """

    def __init__(
        self,
        results_dir: str | Path,
        run_name: str,
        config: dict,
        *,
        clock: Callable[[], datetime] | None = None,
    ):
        self.results_dir = Path(results_dir)
        self.run_name = _check_run_name(run_name)
        self.path = self.results_dir / f"{run_name}.json"
        self.config = copy.deepcopy(dict(config))
        self._clock = clock or _utcnow
        self.started_at = _iso(self._clock())
        self.finished_at: str | None = None
        self.status: str | None = None
        self.written_to = self.path
        from gnlorp import sysinfo  # imports torch; keep `load_results` readers light

        self.git = sysinfo.git_info()
        self.versions = sysinfo.package_versions()
        self.device = sysinfo.device_info()
        self.eval: dict = {}
        self.best: dict = {}
        self.last: dict = {}
        self.eval_history: list[dict] = []
        self.train: dict = {}
        self.memory: dict = {}
        self.notes: list[str] = []
        self.identity: dict = {}
        self.baseline: dict = {}
        self.origin: dict = {}
        self._loss = _Curve()
        self._lr = _Curve()
        self._has_lr = False

    # -- filling in ------------------------------------------------------------------------------

    def set_eval(self, split_metrics: dict) -> None:
        """The latest evaluation: ``{"validation": {"accuracy": .., "f1": ..}, ...}``."""
        self.eval = copy.deepcopy(dict(split_metrics))

    def add_eval(self, step: int, metrics: dict, epoch: int | None = None) -> None:
        """Append one evaluation to ``eval_history`` and make it the latest ``eval``.

        ``metrics`` has the shape of ``set_eval`` (split -> metric -> value); a flat
        ``{"accuracy": ..}`` is taken as the "validation" split.
        """
        metrics = dict(metrics)
        if metrics and not any(isinstance(v, Mapping) for v in metrics.values()):
            metrics = {"validation": metrics}
        self.eval_history.append(
            {"step": int(step), "epoch": None if epoch is None else int(epoch),
             "metrics": copy.deepcopy(metrics)}
        )
        self.set_eval(metrics)

    def add_loss(self, step: int, loss: float, lr: float | None = None) -> None:
        """One training-loss point (and optionally the learning rate at that step)."""
        self._loss.add(step, None if loss is None else float(loss))
        if lr is not None:
            self._has_lr = True
            self._lr.add(step, float(lr))

    def set_train(self, **fields: Any) -> None:
        """Training totals: steps, tokens, wall_seconds, tokens_per_second, ... (merged)."""
        self.train.update(copy.deepcopy(fields))

    def set_memory(self, **fields: Any) -> None:
        """Peak memory snapshot fields plus optimizer_state_bytes, ... (merged)."""
        self.memory.update(copy.deepcopy(fields))

    def set_best_last(self, best: dict, last: dict) -> None:
        """The best evaluation (with its epoch/step) and the last one, as chosen by the trainer."""
        self.best = copy.deepcopy(dict(best))
        self.last = copy.deepcopy(dict(last))

    def add_note(self, note: str) -> None:
        """A free-text remark kept in the optional ``notes`` list (e.g. a substitution made)."""
        self.notes.append(str(note))

    def set_origin(self, **fields: Any) -> None:
        """Where the run came from: the sweep file (-cn) and the experiment, when Hydra knows them."""
        self.origin = copy.deepcopy(fields)

    def set_baseline(self, baseline: dict) -> None:
        """What an input-blind model scores on the eval splits (kept in the optional ``baseline``)."""
        self.baseline = copy.deepcopy(dict(baseline))

    def set_identity(self, **fields: Any) -> None:
        """The run identity (gnlorp/identity.py): its hash, the training settings it hashes, the config hash."""
        self.identity = copy.deepcopy(fields)

    @property
    def loss_curve(self) -> list[list]:
        return self._loss.export()

    @property
    def lr_curve(self) -> list[list]:
        return self._lr.export() if self._has_lr else []

    # -- output ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        record = {
            "schema_version": SCHEMA_VERSION,
            "run_name": self.run_name,
            "status": self.status,
            "config": self.config,
            "git": self.git,
            "versions": self.versions,
            "device": self.device,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "eval": self.eval,
            "best": self.best,
            "last": self.last,
            "eval_history": self.eval_history,
            "train": self.train,
            "memory": self.memory,
            "loss_curve": self._loss.export(),
        }
        if self._has_lr:
            record["lr_curve"] = self._lr.export()
        if self.notes:
            record["notes"] = list(self.notes)
        if self.identity:
            record["identity"] = self.identity
        if self.baseline:
            record["baseline"] = self.baseline
        if self.origin:
            record["origin"] = self.origin
        return record

    def write(self, status: str) -> Path:
        """Atomically (re)write the record with ``status``; returns the path written.

        "incomplete" is for periodic saves while training; "complete" and "failed" stamp
        ``finished_at``. Callable any number of times. A complete result already at ``path`` is never
        replaced by one that is not: that one goes to ``<path>.<status>`` (a later complete write removes it).
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.status = status
        self.finished_at = None if status == "incomplete" else _iso(self._clock())
        self.written_to = self.path
        if status != "complete" and _status_on_disk(self.path) == "complete":
            self.written_to = self.path.with_name(f"{self.path.name}.{status}")  # not *.json: no table reads it
        atomic_write_json(self.written_to, self.to_dict())
        if status == "complete":
            for other in STATUSES:
                self.path.with_name(f"{self.path.name}.{other}").unlink(missing_ok=True)
        return self.written_to


def _status_on_disk(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def validate_record(record: Any) -> str | None:
    """Why ``record`` is not a usable schema-1 record, or None if it is."""
    if not isinstance(record, dict):
        return f"not a JSON object (got {type(record).__name__})"
    version = record.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        return f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        return "missing keys: " + ", ".join(missing)
    for key, types in _REQUIRED.items():
        if not isinstance(record[key], types) or (int in types and isinstance(record[key], bool)):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return f"key {key!r} should be {names}, got {type(record[key]).__name__}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is not one of {', '.join(STATUSES)}"
    if "notes" in record and not isinstance(record["notes"], list):
        return "key 'notes' should be a list"
    return None


def load_results(results_dir: str | Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Every ``results_dir/*.json`` record, and ``(path, reason)`` for each file that is not usable.

    Files are read in name order. Leftover ``*.json.tmp-<pid>`` files from interrupted writes are
    not ``*.json`` and are ignored. A missing directory gives ``([], [])``. Never raises.
    """
    results_dir = Path(results_dir)
    records: list[dict] = []
    problems: list[tuple[Path, str]] = []
    try:
        paths = sorted(p for p in results_dir.glob("*.json") if not p.name.startswith("."))
    except OSError as e:
        return [], [(results_dir, f"cannot list directory: {e}")]
    for path in paths:
        try:
            if not path.is_file():
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            problems.append((path, f"unreadable: {type(e).__name__}: {e}"))
            continue
        if not text.strip():
            problems.append((path, "empty file"))
            continue
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, ValueError, RecursionError) as e:
            problems.append((path, f"invalid JSON: {e}"))
            continue
        reason = validate_record(record)
        if reason is not None:
            problems.append((path, reason))
            continue
        records.append(record)
    return records, problems
