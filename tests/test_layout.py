"""The package's shape: one concept per file (no file over 450 lines) and no import cycle between its modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "emotion_rl"
MAX_LINES = 450


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
