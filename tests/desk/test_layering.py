"""The desk puts the services together; no service and nothing shared imports it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_but_the_app_imports_the_desk() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for folder in ("shared", "services")
        for path in (ROOT / folder).rglob("*.py")
        if "desk" not in path.relative_to(ROOT).parts
        and any(name == "services.desk" or name.startswith("services.desk.") for name in _imports(path))
    }
    assert importers == {"services/app.py"}
