"""The package's shape: one concept per file (no file over 450 lines), no function over 60 lines, and no import
cycle between its modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "emotion_rl"
MAX_LINES = 450
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """``emotion_rl`` modules imported at module level (imports inside functions or TYPE_CHECKING are lazy)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emotion_rl"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("emotion_rl"))
    return found


def test_no_package_file_holds_more_than_one_concept_worth_of_lines():
    long = {name: n for name, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def long_functions(path: Path, limit: int) -> list[tuple[str, int, int]]:
    """``(qualified name, line, length)`` of every function or method in ``path`` (nested ones included) over
    ``limit`` lines, in source order; the length counts from the ``def`` line (decorators left out) to the last line
    of the body, docstring included."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, prefix)
                continue
            name = prefix + child.name
            length = child.end_lineno - child.lineno + 1
            if not isinstance(child, ast.ClassDef) and length > limit:
                found.append((name, child.lineno, length))
            visit(child, name + ".")

    visit(ast.parse(path.read_text()), "")
    return found


def test_no_function_in_the_package_is_longer_than_a_screen():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({length} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, length in long_functions(path, MAX_FUNCTION_LINES)
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(long)


def test_the_function_length_check_counts_nested_functions_and_methods(tmp_path):
    source = tmp_path / "module.py"
    source.write_text(
        "class A:\n"
        "    @staticmethod\n"  # not counted: the length starts at the def
        "    async def method():\n"  # 6 lines: its def to its return, the nested function's included
        "        def inner():\n"  # 4 lines
        "            a = 1\n"
        "            b = 2\n"
        "            return a + b\n"
        "        return inner()\n"
        "\n"
        "if True:\n"
        "    def short():\n"
        "        return 0\n"
    )
    assert long_functions(source, 3) == [("A.method", 3, 6), ("A.method.inner", 4, 4)]
    assert long_functions(source, 1) == [("A.method", 3, 6), ("A.method.inner", 4, 4), ("short", 11, 2)]
    assert long_functions(source, 6) == []


def test_the_package_has_no_import_cycle():
    graph = {
        name: {m for m in imports_of(p) if m in modules() and not m.endswith("__init__")}
        for name, p in modules().items()
    }
    graph = {
        name: {m for m in deps if m != "emotion_rl"} for name, deps in graph.items() if not name.endswith("__init__")
    }
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in graph.get(name, ()):
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, name, dep])}")
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
