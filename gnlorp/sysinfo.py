"""What a result file says about where it ran: git state, package versions, device, peak memory.

Everything here is best effort and never raises for a missing tool or file: a result file with a
``None`` in it is better than a run that dies while describing itself.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

# Distribution names whose versions go into every result file ("python" is the interpreter).
PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "peft",
    "bitsandbytes",
    "evaluate",
    "hydra-core",
    "wandb",
    "gnlorp",
)

_GIT_TIMEOUT_S = 10


def _git(repo_dir: Path, *args: str) -> str | None:
    """stdout of ``git -C repo_dir args`` stripped, or None if git is missing or the command fails."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo_dir), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip()


def git_info(repo_dir: str | Path | None = None) -> dict:
    """``{"sha": str|None, "dirty": bool|None}`` for the repository holding ``repo_dir``.

    ``repo_dir`` defaults to the directory containing the ``gnlorp`` package. ``dirty`` means a
    tracked file differs from HEAD (staged or not); untracked files do not count, so results/
    written by earlier runs do not mark later runs dirty. A repository without commits has
    ``sha=None`` but a real ``dirty``. No git, or not a repository: both None. Never raises.
    """
    if repo_dir is None:
        repo_dir = Path(__file__).resolve().parent.parent
    repo_dir = Path(repo_dir)
    if not repo_dir.is_dir():
        return {"sha": None, "dirty": None}
    if _git(repo_dir, "rev-parse", "--git-dir") is None:  # not a repository, or no git at all
        return {"sha": None, "dirty": None}
    sha = _git(repo_dir, "rev-parse", "--verify", "--quiet", "HEAD") or None
    status = _git(repo_dir, "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status)
    return {"sha": sha, "dirty": dirty}


def package_versions() -> dict:
    """Installed versions of the packages a result depends on (missing ones are None)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
        except Exception:  # a broken dist-info must not break a run
            versions[name] = None
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    if value.strip():
                        return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info() -> dict:
    """The accelerator the run would use: ``{"type", "name", "count", "cpu_cores", "torch_threads"}``."""
    info: dict = {}
    try:
        cuda = torch.cuda.is_available()
    except Exception:
        cuda = False
    if cuda:
        info["type"] = "cuda"
        info["count"] = torch.cuda.device_count()
        try:
            info["name"] = torch.cuda.get_device_name(0)
        except Exception:
            info["name"] = None
    else:
        info["type"] = "cpu"
        info["count"] = 1
        info["name"] = _cpu_model()
    info["cpu_cores"] = os.cpu_count()
    info["torch_threads"] = torch.get_num_threads()
    return info


# ---------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------

_CPU_NOTE = "CPU peak resident set size of the whole process, not tensor bytes"


def _status_kib(field: str) -> int | None:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/self/status, in KiB, or None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def _current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return _ru_maxrss_bytes()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of one run on ``device``.

    CUDA: ``reset()`` clears torch's peak counters, ``snapshot()`` reads torch.cuda.memory_stats.
    CPU: there are no tensor-level counters, so this measures the process's peak resident set size
    (RSS). ``reset()`` records the current RSS as ``start_rss_bytes`` and, where Linux allows, resets
    the kernel's peak mark so ``peak_rss_bytes`` is the peak since reset (``peak_scope``
    "since_reset"); otherwise it is the process-lifetime peak (``peak_scope`` "process").
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self._start_rss: int | None = None
        self._since_reset = False

    def reset(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self._since_reset = _reset_peak_rss()
        self._start_rss = _current_rss_bytes()

    def snapshot(self) -> dict:
        if self.is_cuda:
            stats = torch.cuda.memory_stats(self.device)
            return {
                "kind": "cuda",
                "max_allocated_bytes": int(stats.get("allocated_bytes.all.peak", 0)),
                "max_reserved_bytes": int(stats.get("reserved_bytes.all.peak", 0)),
                "num_alloc_retries": int(stats.get("num_alloc_retries", 0)),
                "num_ooms": int(stats.get("num_ooms", 0)),
            }
        hwm_kib = _status_kib("VmHWM") if self._since_reset else None
        if hwm_kib is not None:
            peak, scope = hwm_kib * 1024, "since_reset"
        else:
            peak, scope = _ru_maxrss_bytes(), "process"
        # The peak can never be below what is resident now (guards against coarse counters).
        peak = max(peak, _current_rss_bytes())
        start = self._start_rss if self._start_rss is not None else None
        return {
            "kind": "cpu_rss",
            "peak_rss_bytes": int(peak),
            "start_rss_bytes": start,
            "peak_scope": scope,
            "note": _CPU_NOTE,
        }
