"""Internal functions stay readable at their call sites: at most 5 positional parameters (a leading self/cls
aside; further options are keyword-only) and no literal tuple of more than 2 elements returned (a small
dataclass or NamedTuple names the parts instead)."""

import ast
from functools import cache

from conftest import ROOT

PACKAGE = ROOT / "gnlorp"
MAX_POSITIONAL = 5
MAX_TUPLE = 2
# file:function -> why it cannot follow the rule
ALLOWED = {
    "gnlorp/optim/weightnorm.py:_WeightNormLinearFn.backward":
        "torch.autograd.Function.backward returns one gradient per input of forward (x, V, g, b), as a tuple",
}


def _functions(tree: ast.AST):
    """(qualified name, node) of every function and method, nested ones included."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _positional(fn: ast.FunctionDef) -> int:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return len(names) - (names[:1] in (["self"], ["cls"]))


def _own_returns(fn: ast.FunctionDef):
    """The return statements of `fn` itself, not of the functions or lambdas nested in it."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


@cache
def _package() -> dict[str, list]:
    """file -> [(qualified name, function node)] of every module of the package."""
    return {str(path.relative_to(ROOT)): list(_functions(ast.parse(path.read_text(), str(path))))
            for path in sorted(PACKAGE.rglob("*.py"))}


def _offenders() -> tuple[list[str], list[str]]:
    positional, tuples = [], []
    for where, functions in _package().items():
        for name, fn in functions:
            if f"{where}:{name}" in ALLOWED:
                continue
            if _positional(fn) > MAX_POSITIONAL:
                positional.append(f"{where}:{name} ({_positional(fn)} positional parameters)")
            for ret in _own_returns(fn):
                if isinstance(ret.value, ast.Tuple) and len(ret.value.elts) > MAX_TUPLE:
                    tuples.append(f"{where}:{name} (returns a {len(ret.value.elts)}-tuple, line {ret.lineno})")
    return positional, tuples


def test_no_function_takes_more_than_five_positional_parameters():
    positional, _ = _offenders()
    assert not positional, "make the rest keyword-only (*,):\n" + "\n".join(positional)


def test_no_function_returns_a_tuple_of_more_than_two():
    _, tuples = _offenders()
    assert not tuples, "return a small frozen dataclass or NamedTuple:\n" + "\n".join(tuples)


def test_the_allowed_exceptions_still_exist():
    names = {f"{where}:{name}" for where, functions in _package().items() for name, _ in functions}
    assert set(ALLOWED) <= names


def test_the_rules_see_what_they_look_for():
    tree = ast.parse("class A:\n    def f(self, a, b, c, d, e, g):\n        def inner():\n            return 1, 2, 3\n"
                     "        return a, b\n")
    (_, f), (_, inner) = list(_functions(tree))
    assert _positional(f) == 6 and _positional(inner) == 0
    assert [len(r.value.elts) for r in _own_returns(f)] == [2]
    assert [len(r.value.elts) for r in _own_returns(inner)] == [3]
