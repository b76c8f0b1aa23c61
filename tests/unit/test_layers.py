"""The layers of the package (shared/design/ARCHITECTURE.md, "One run, end to end, and the layers it should
respect"): the optimizer package stands alone on torch, no module imports one that imports it back, and every
import points down the layer map below, but for one declared exception."""

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "gnlorp"

# module or package prefix -> level, from the ground up (the longest prefix decides; "gnlorp" is the root only)
LAYERS = {
    # 0: the light package root (version, CONF_DIR, UserError, BLOCK_PATTERN) and the optimizer package (torch only:
    # optimizers, projector, parametrizations, target selection)
    "gnlorp": 0,
    "gnlorp.optim": 0,
    # 1: state-byte arithmetic, settings schema, errors, and the pure parts below the results model (the result file,
    # the learning-rate choice, paired statistics); the config groups and a model's dims read from files alone
    "gnlorp.state_bytes": 1,
    "gnlorp.schema": 1,
    "gnlorp.errors": 1,
    "gnlorp.record": 1,
    "gnlorp.lr_selection": 1,
    "gnlorp.paired": 1,
    "gnlorp.sysinfo": 1,
    "gnlorp.data_fingerprint": 1,
    "gnlorp.model_dims": 1,
    "gnlorp.config_groups": 1,
    "gnlorp.conf": 1,
    # 2: models, tasks, methods; the run identity and the results model read the method registry
    "gnlorp.models": 2,
    "gnlorp.tokenizers": 2,
    "gnlorp.tasks": 2,
    "gnlorp.methods": 2,
    "gnlorp.identity": 2,
    "gnlorp.results": 2,
    # 3: the train loop and the jobs it runs, the checkpointer, the tracker
    "gnlorp.train": 3,
    "gnlorp.jobs": 3,
    "gnlorp.distributed": 3,
    "gnlorp.fsdp": 3,
    "gnlorp.checkpoint": 3,
    "gnlorp.checkpointer": 3,
    "gnlorp.sharded_checkpoint": 3,
    "gnlorp.tracker": 3,
    "gnlorp.wandb_log": 3,
    # 4: the runner (and its checks), and beside it the tables, benchmarks, memory commands, GPU check, integrations
    "gnlorp.runner": 4,
    "gnlorp.planning": 4,
    "gnlorp.handover": 4,
    "gnlorp.session": 4,
    "gnlorp.outcome": 4,
    "gnlorp.checks": 4,
    "gnlorp.tables": 4,
    "gnlorp.bench": 4,
    "gnlorp.memory": 4,
    "gnlorp.memory_model": 4,
    "gnlorp.gpu_check": 4,
    "gnlorp.gpu_table": 4,
    "gnlorp.integrations": 4,
    # 5: the command line
    "gnlorp.cli": 5,
}
# the one import allowed to point up: the ConfigStore registration of each method's settings schema
UPWARD_EXCEPTIONS = {("gnlorp.schema", "gnlorp.methods")}

HEAVY = ("transformers", "peft", "hydra", "omegaconf", "datasets", "wandb")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _targets(module: str, path: Path, node, mods: dict) -> list[str]:
    """The gnlorp modules an import statement names (`from pkg import sub` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in mods else source for a in node.names]
    found = []
    for name in names:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in mods and name != module:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the gnlorp modules it imports, anywhere in its code (function-local imports included)."""
    mods = _modules()
    graph = {}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for t in _targets(module, path, node, mods)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def level(module: str) -> int | None:
    if module == "gnlorp":
        return LAYERS["gnlorp"]
    prefixes = [p for p in LAYERS if p != "gnlorp" and (module == p or module.startswith(p + "."))]
    return LAYERS[max(prefixes, key=len)] if prefixes else None


def _fresh_interpreter(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_optimizer_package_imports_nothing_else_of_gnlorp_nor_a_heavy_library():
    seen = _fresh_interpreter(
        "import json, sys, gnlorp.optim\n"
        "print(json.dumps({'file': sys.modules['gnlorp'].__file__, 'modules': sorted(sys.modules)}))")
    assert Path(seen["file"]).resolve() == (PACKAGE / "__init__.py").resolve()
    outside = [m for m in seen["modules"] if m.startswith("gnlorp.") and not (m == "gnlorp.optim"
                                                                             or m.startswith("gnlorp.optim."))]
    assert outside == [], f"import gnlorp.optim loaded {outside}"
    heavy = [m for m in HEAVY if m in seen["modules"]]
    assert heavy == [], f"import gnlorp.optim loaded {heavy}"
    assert "gnlorp.optim.targets" in seen["modules"]  # target selection is part of it


def test_the_package_root_is_light():
    seen = _fresh_interpreter("import json, sys, gnlorp\nprint(json.dumps(sorted(sys.modules)))")
    loaded = [m for m in seen if m.startswith("gnlorp.") or m.split(".")[0] in ("torch", "numpy", *HEAVY)]
    assert loaded == [], f"import gnlorp loaded {loaded}"


def test_the_walker_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "gnlorp.config_groups" in graph["gnlorp.checks"]      # inside check_group_choices
    assert "gnlorp.methods" in graph["gnlorp.schema"]            # inside register
    assert "gnlorp.lr_selection" in graph["gnlorp.results"]      # `from . import lr_selection`
    assert "gnlorp" in graph["gnlorp.optim.targets"]             # `from .. import UserError`


def test_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_module_has_a_layer_and_imports_point_down():
    graph = import_graph()
    unmapped = sorted(m for m in graph if level(m) is None)
    assert unmapped == [], f"modules missing from LAYERS: {unmapped}"
    upward = sorted((a, b) for a, targets in graph.items() for b in targets if level(b) > level(a))
    unexpected = [(a, b) for a, b in upward if (a, b) not in UPWARD_EXCEPTIONS]
    assert unexpected == [], "imports pointing up the layers:\n" + "\n".join(
        f"{a} (level {level(a)}) -> {b} (level {level(b)})" for a, b in unexpected)
    assert len(UPWARD_EXCEPTIONS) <= 1
