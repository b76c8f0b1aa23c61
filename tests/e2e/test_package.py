"""The package as users get it: a wheel built from the repo, installed into a fresh virtual environment and run
from a folder outside the repo (the configs ship inside gnlorp; `gnlorp` is the console script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import GLUE_DIR, ROOT, needs_shared

pytestmark = [needs_shared, pytest.mark.slow]

HEAVY = ("transformers", "peft", "hydra", "omegaconf", "datasets", "wandb", "bitsandbytes", "evaluate", "sklearn")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, gnlorp script, wheel) of a fresh venv holding the wheel; the dependencies come from this venv's
    site-packages through a path entry (no download), gnlorp itself only from the wheel."""
    tmp = tmp_path_factory.mktemp("pkg")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("gnlorp-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True, timeout=120)
    python = tmp / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # then the dependencies: this environment's site-packages as a plain path (its .pth files, the editable
    # finder of the checkout among them, are not processed). Only after the install: a pip that saw this
    # environment's gnlorp on its path would uninstall it from here.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, tmp / "venv" / "bin" / "gnlorp", wheel, tmp


def _env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1"}


def test_the_wheel_needs_only_torch_and_names_its_extras(installed):
    _, _, wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        names = z.namelist()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["torch<2.14,>=2.6"]
    assert {line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Provides-Extra:")} >= {
        "8bit", "lowbit", "runner", "offline", "test"}
    assert "gnlorp/conf/config.yaml" in names and "gnlorp/conf/method/gradnormlorp.yaml" in names
    assert "gnlorp/tables/results_readme.md" in names  # the template make tables writes results/README.md from
    assert not any(n.startswith("conf/") for n in names)  # the top-level conf/ is a symlink for users, not packaged
    assert any(n.endswith("LICENSE") for n in names) and "License-Expression: MIT" in meta


def test_the_optimizers_import_with_torch_alone(installed):
    python, _, _, tmp = installed
    code = ("import sys, gnlorp.optim, gnlorp\n"
            f"print(gnlorp.__file__); print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    p = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp, env=_env(), timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    where, loaded = p.stdout.splitlines()
    assert str(tmp / "venv") in where and str(ROOT) not in where  # the wheel's copy, not the checkout
    assert loaded == "[]"


def test_the_console_script_runs_from_outside_the_repo(installed):
    python, script, _, tmp = installed
    work = tmp / "elsewhere"
    work.mkdir()
    p = subprocess.run([str(script), "task=glue/rte", "model=minilm", "method=gradnormlorp", "train.max_steps=2",
                        f"task.data_dir={GLUE_DIR}", "task.max_eval_samples=16", "logger.mode=disabled",
                        "train.progress=false"], capture_output=True, text=True, cwd=work, env=_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (result,) = (work / "results").glob("*.json")
    rec = json.loads(result.read_text())
    assert rec["status"] == "complete" and rec["train"]["steps"] == 2
    p = subprocess.run([str(python), "-m", "gnlorp.memory"], capture_output=True, text=True, cwd=work, env=_env(),
                       timeout=300)
    assert p.returncode == 0 and "llama_7b" in p.stdout, p.stderr[-2000:]


def _closure(name: str) -> list:
    """The installed distributions `name` needs (its requirements, recursively; extras and markers not taken)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen, todo = {}, [name]
    while todo:
        n = todo.pop()
        key = n.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = distribution(n)
        except PackageNotFoundError:
            continue
        seen[key] = dist
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


@pytest.fixture(scope="module")
def base_install(installed):
    """The wheel in a fresh venv beside torch and what torch needs, nothing else: `pip install gnlorp`."""
    _, _, wheel, tmp = installed
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "base")], check=True, timeout=120)
    python = tmp / "base" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    purelib = Path(sysconfig.get_paths()["purelib"])
    only = tmp / "torch-only"
    only.mkdir()
    for dist in _closure("torch"):
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            if (purelib / top).exists() and not (only / top).exists():
                (only / top).symlink_to(purelib / top)
    (site / "deps.pth").write_text(f"{only}\n")
    return python, tmp / "base" / "bin" / "gnlorp", tmp


@pytest.mark.parametrize("command", [["gnlorp", "--help"], ["-m", "gnlorp.memory"], ["-m", "gnlorp.memory", "peak"],
                                     ["-m", "gnlorp.tables", "--results", "."]])
def test_on_the_base_install_each_command_names_the_extra_it_needs(base_install, command):
    python, script, tmp = base_install
    check = subprocess.run([str(python), "-c", "import gnlorp.optim, importlib.util as u; "
                            "print([m for m in ('hydra', 'omegaconf', 'transformers') if u.find_spec(m)])"],
                           capture_output=True, text=True, cwd=tmp, env=_env(), timeout=120)
    assert check.returncode == 0 and check.stdout.strip() == "[]", check.stderr[-2000:]  # torch alone, truly
    argv = [str(script), *command[1:]] if command[0] == "gnlorp" else [str(python), *command]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=tmp, env=_env(), timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    (line,) = [line for line in p.stderr.splitlines() if line.startswith("error: ")]  # torch may warn of numpy
    assert line.startswith("error: this command needs the runner's packages") and "pip install 'gnlorp[runner]'" in line
