"""The package's structure: no import circle (imports under TYPE_CHECKING counted too), and
modules and functions of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import lit_vit

PACKAGE = Path(lit_vit.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """Each lit_vit module -> the lit_vit modules it imports (anywhere in the file)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lit_vit"):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("lit_vit")}
        modules[name] = imported
    return modules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_between_modules():
    graph = module_imports()
    # A package's __init__ re-exports its modules; a module importing a sibling through the
    # package is the package's own business, not a circle between modules.
    edges = {
        module: {d for d in deps if not module.startswith(d + ".")}
        for module, deps in graph.items()
    }
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The sizes the rooms were cut to: lines of a module, of a class, and of a function body
# (its signature and docstring aside).
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 450, 250, 60


def function_body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_module_class_or_function_is_longer_than_a_room_should_be():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name, lines = path.relative_to(PACKAGE.parent), source.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        too_long += [
            f"{name}:{node.lineno} {node.name}"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and function_body_lines(node) > MAX_FUNCTION_LINES
            or isinstance(node, ast.ClassDef)
            and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
        ]
    assert not too_long, too_long


def test_the_size_check_counts_a_body_without_its_docstring():
    (function,) = ast.parse('def f():\n    """Doc."""\n    a = 1\n    return a\n').body
    assert function_body_lines(function) == 2
