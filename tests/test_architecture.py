"""The package's shape, read from its source with ``ast`` (DESIGN.md, issue #11).

* Algorithm modules (everything under ``lotto_jax/`` but ``lotto_jax/runs/`` and the
  package ``__init__``) never import the run layer, not even inside a function.
* The module-level imports among ``lotto_jax`` modules form no cycle.
* Algorithm modules do no file I/O or printing: no ``print(``/``open(`` calls, no
  ``orbax``, ``rich`` or ``tyro`` imports.
* No module over 520 lines, no function over 85 lines (docstrings excluded).

The truth each test compares with is the source text itself, parsed independently of
the package (nothing here imports ``lotto_jax``).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "lotto_jax"
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 85
FORBIDDEN_LIBS = ("orbax", "rich", "tyro")
FORBIDDEN_CALLS = ("print", "open")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_algorithm(name: str) -> bool:
    return (
        name != "lotto_jax"
        and name != "lotto_jax.runs"
        and not name.startswith("lotto_jax.runs.")
    )


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))


def _resolve(name: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[name].name == "__init__.py"
    base = name.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, nodes) -> list[tuple[int, str]]:
    """``(line, module)`` for every module an import among ``nodes`` names.

    ``from pkg import sub`` names ``pkg.sub`` when ``sub`` is a module of the package
    and ``pkg`` for any other name (a name ``pkg/__init__.py`` defines).
    """
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, node)
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else mod))
    return out


def _all_imports(name: str) -> list[tuple[int, str]]:
    return _imports(name, ast.walk(_tree(name)))


def _top_level_imports(name: str) -> list[str]:
    """Imports that run when the module is imported: module level, including inside
    ``if``/``try`` blocks, but not inside functions or ``if TYPE_CHECKING``."""

    def walk(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node
            for field in ("body", "orelse", "finalbody", "handlers"):
                if isinstance(node, ast.If | ast.Try | ast.With | ast.ExceptHandler):
                    yield from walk(getattr(node, field, []) or [])

    return [m for _, m in _imports(name, walk(_tree(name).body))]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_walk_sees_the_package():
    # a guard for the tests below: they are vacuous if the walk finds nothing
    assert {"lotto_jax.train", "lotto_jax.masks", "lotto_jax.runs.engine"} <= set(
        MODULES
    )
    assert _is_algorithm("lotto_jax.train") and not _is_algorithm("lotto_jax.runs.cli")
    assert "lotto_jax.masks" in _top_level_imports("lotto_jax.prune")


def test_algorithm_modules_never_import_the_run_layer():
    offenders = [
        f"{MODULES[name].relative_to(ROOT)}:{line} imports {mod}"
        for name in MODULES
        if _is_algorithm(name)
        for line, mod in _all_imports(name)
        if _within(mod, "lotto_jax.runs")
    ]
    assert not offenders, "algorithm modules import the run layer:\n" + "\n".join(
        offenders
    )


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a self-loop),
    by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _import_graph() -> dict[str, set[str]]:
    """``module -> the lotto_jax modules its module-level imports run``.

    ``import lotto_jax.a.b`` is an edge to ``lotto_jax.a.b`` alone: the parent
    packages' ``__init__`` run before any of their submodules, so they are no edge.
    """
    graph = {}
    for name in MODULES:
        graph[name] = {
            mod for mod in _top_level_imports(name) if mod in MODULES and mod != name
        }
    return graph


def test_module_imports_have_no_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles among lotto_jax modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_algorithm_modules_do_no_io_or_printing():
    offenders = set()
    for name in MODULES:
        if not _is_algorithm(name):
            continue
        rel = MODULES[name].relative_to(ROOT)
        for node in ast.walk(_tree(name)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in FORBIDDEN_CALLS
            ):
                offenders.add(f"{rel}:{node.lineno} calls {node.func.id}(")
        for line, mod in _all_imports(name):
            if any(_within(mod, lib) for lib in FORBIDDEN_LIBS):
                offenders.add(f"{rel}:{line} imports {mod}")
    assert not offenders, "I/O or printing in algorithm modules:\n" + "\n".join(
        sorted(set(offenders))
    )


def _function_lengths(tree: ast.Module):
    """``(qualified name, line, length)`` of every function, its docstring excluded."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = child.end_lineno - child.lineno + 1
                body = child.body
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    length -= body[0].end_lineno - body[0].lineno + 1
                out.append((prefix + child.name, child.lineno, length))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def test_function_length_counts_without_docstring():
    src = 'def f():\n    """Doc\n\n    more.\n    """\n    a = 1\n    return a\n'
    assert _function_lengths(ast.parse(src)) == [("f", 1, 3)]


def test_module_and_function_sizes():
    offenders = []
    for name, path in MODULES.items():
        rel = path.relative_to(ROOT)
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            offenders.append(f"{rel}: {n} lines (max {MAX_MODULE_LINES})")
        for fn, line, length in _function_lengths(_tree(name)):
            if length > MAX_FUNCTION_LINES:
                offenders.append(
                    f"{rel}:{line} {fn}: {length} lines (max {MAX_FUNCTION_LINES})"
                )
    assert not offenders, "too long:\n" + "\n".join(offenders)


@pytest.mark.parametrize("lib", FORBIDDEN_LIBS)
def test_import_walk_sees_function_local_imports(lib):
    src = f"def f():\n    import {lib}.x\n    from {lib} import y\n"
    found = [m for _, m in _imports("lotto_jax.train", ast.walk(ast.parse(src)))]
    assert found == [f"{lib}.x", lib]
    assert any(_within(m, lib) for m in found)
