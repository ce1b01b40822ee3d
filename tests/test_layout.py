"""The shape of the project: import contracts, test helpers in one place, the compose file."""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.cli import build_parser
from shared.tasknames import QUEUES

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_import_contracts_hold() -> None:
    """Layers, independence and no cycles, as pyproject's [tool.importlinter] contracts say."""
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout[-4000:]


def _is_test_module(name: str) -> bool:
    return name.startswith("tests.") and (
        name.rsplit(".", 1)[-1].startswith("test_") or name.endswith("conftest")
    )


@pytest.mark.parametrize(
    "path", sorted((ROOT / "tests").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_test_modules_import_only_helpers(path: Path) -> None:
    """Helpers live in tests/helpers; no test module (nor conftest) is imported by another module."""
    assert not [name for name in imports_of(path) if _is_test_module(name)]


def test_shared_is_a_package() -> None:
    assert (ROOT / "shared" / "__init__.py").is_file()


def test_compose_parses_and_names_real_commands() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"redis", "postgres", "api", "scheduler"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    queues = {s["command"][s["command"].index("-Q") + 1] for s in workers.values()}
    assert queues == set(QUEUES)
    parser = build_parser()
    for name, service in services.items():
        command = service.get("command")
        if command and command[0] == "newsroom":
            parser.parse_args(command[1:])  # exits (fails the test) on an unknown command
        elif name not in ("redis", "postgres"):
            pytest.fail(f"{name} runs {shlex.join(command or [])}")
