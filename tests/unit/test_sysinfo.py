"""gnlorp.sysinfo: git state, versions, device and peak memory as written into result files."""

import mmap
import shutil
import subprocess

import pytest
import torch

from gnlorp import sysinfo

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_git_info_outside_a_repository_is_none(tmp_path):
    plain = tmp_path / "not_a_repo"
    plain.mkdir()
    assert sysinfo.git_info(plain) == {"sha": None, "dirty": None}
    assert sysinfo.git_info(tmp_path / "does_not_exist") == {"sha": None, "dirty": None}


def test_git_info_without_git_binary_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert sysinfo.git_info(tmp_path) == {"sha": None, "dirty": None}


@needs_git
def test_git_info_reports_sha_and_dirty(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
             "-c", "commit.gpgsign=false", *args],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    git("init", "-q")
    assert sysinfo.git_info(repo) == {"sha": None, "dirty": False}  # no commits yet
    (repo / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    sha = git("rev-parse", "HEAD")
    assert sysinfo.git_info(repo) == {"sha": sha, "dirty": False}
    (repo / "untracked.json").write_text("{}")  # e.g. results of an earlier run: not dirty
    assert sysinfo.git_info(repo)["dirty"] is False
    (repo / "a.txt").write_text("two\n")
    assert sysinfo.git_info(repo) == {"sha": sha, "dirty": True}
    # A subdirectory of the repository reports the same repository.
    (repo / "sub").mkdir()
    assert sysinfo.git_info(repo / "sub")["sha"] == sha


def test_git_info_default_never_raises():
    info = sysinfo.git_info()
    assert set(info) == {"sha", "dirty"}
    assert info["sha"] is None or (isinstance(info["sha"], str) and len(info["sha"]) == 40)
    assert info["dirty"] in (None, True, False)


def test_package_versions():
    versions = sysinfo.package_versions()
    assert set(versions) == {"python", *sysinfo.PACKAGES}
    assert versions["python"].count(".") == 2
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["hydra-core"] is not None
    assert versions["gnlorp"] == "0.1.0"


def test_package_versions_missing_is_none(monkeypatch):
    monkeypatch.setattr(sysinfo, "PACKAGES", ("torch", "surely-not-installed-pkg-xyz"))
    versions = sysinfo.package_versions()
    assert versions["surely-not-installed-pkg-xyz"] is None
    assert versions["torch"] is not None


def test_device_info_on_this_machine_is_cpu():
    if torch.cuda.is_available():
        pytest.skip("this test describes the CPU-only development machine")
    info = sysinfo.device_info()
    assert info["type"] == "cpu"
    assert info["count"] == 1
    assert isinstance(info["name"], str) and info["name"]
    assert info["cpu_cores"] >= 1
    assert info["torch_threads"] == torch.get_num_threads()


def test_cpu_model_falls_back_without_proc(monkeypatch):
    real_open = open

    def no_cpuinfo(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_cpuinfo)
    monkeypatch.setattr(sysinfo.platform, "processor", lambda: "")
    monkeypatch.setattr(sysinfo.platform, "machine", lambda: "x86_64")
    assert sysinfo._cpu_model() == "x86_64"


MB = 1024 * 1024


def test_peak_memory_cpu_sees_a_200mb_tensor():
    tracker = sysinfo.PeakMemory(torch.device("cpu"))
    tracker.reset()
    before = tracker.snapshot()
    assert before["kind"] == "cpu_rss"
    assert before["note"] == "CPU peak resident set size of the whole process, not tensor bytes"
    start = before["start_rss_bytes"]
    assert start > 10 * MB  # a Python process with torch loaded
    # 200 MB in fresh anonymous pages, every one touched. A plain torch.ones could be served from heap
    # memory that earlier tests freed but the allocator kept resident, and then RSS would not grow.
    region = mmap.mmap(-1, 200 * MB)
    big = torch.frombuffer(region, dtype=torch.uint8)
    big.fill_(1)
    snap = tracker.snapshot()
    assert snap["peak_rss_bytes"] >= start + 190 * MB
    assert snap["start_rss_bytes"] == start
    del big
    region.close()
    # The peak is a peak: freeing the tensor does not lower it.
    assert tracker.snapshot()["peak_rss_bytes"] >= start + 190 * MB
    if snap["peak_scope"] == "since_reset":
        # A new reset forgets the old peak (Linux clear_refs); allow some slack for allocator noise.
        tracker.reset()
        again = tracker.snapshot()
        assert again["peak_rss_bytes"] < again["start_rss_bytes"] + 100 * MB


def test_peak_memory_cpu_snapshot_without_reset():
    snap = sysinfo.PeakMemory("cpu").snapshot()
    assert snap["start_rss_bytes"] is None
    assert snap["peak_rss_bytes"] > 0
    assert snap["peak_scope"] == "process"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_cuda():
    device = torch.device("cuda", 0)
    tracker = sysinfo.PeakMemory(device)
    tracker.reset()
    x = torch.empty(64 * MB, dtype=torch.uint8, device=device)
    snap = tracker.snapshot()
    del x
    assert snap["kind"] == "cuda"
    assert snap["max_allocated_bytes"] >= 64 * MB
    assert snap["max_reserved_bytes"] >= snap["max_allocated_bytes"]
    assert snap["num_ooms"] == 0 and snap["num_alloc_retries"] >= 0
