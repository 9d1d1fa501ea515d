"""The modules of `models` import each other without a circle (imports inside functions included), so
no module has to hide an import in a function to load."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "models"
IMPORT = re.compile(r"^\s*(?:from\s+(models\.\w+)\s+import|import\s+(models\.\w+))", re.MULTILINE)


def _graph(folder: Path) -> dict[str, set[str]]:
    graph = {}
    for path in sorted(folder.glob("*.py")):
        own = f"models.{path.stem}"
        found = {a or b for a, b in IMPORT.findall(path.read_text(encoding="utf-8"))}
        graph[own] = found - {own}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of `graph` as the modules along it, or [] when there is none."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return []


def test_models_has_no_import_circle():
    assert _cycle(_graph(PACKAGE)) == []


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    (tmp_path / "a.py").write_text("from models.b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    from models.a import g\n    return g\n")
    assert _cycle(_graph(tmp_path)) == ["models.a", "models.b", "models.a"]
