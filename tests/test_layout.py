"""The shape of the project: layering, the compose file, the packaging."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from services.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("ingest", "publish", "syndicate")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path", sorted((ROOT / "shared").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_shared_imports_no_service(path: Path) -> None:
    assert not [name for name in imports_of(path) if name.split(".")[0] == "services"]


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another(service: str) -> None:
    others = {f"services.{other}" for other in SERVICES if other != service}
    for path in (ROOT / "services" / service).rglob("*.py"):
        bad = [n for n in imports_of(path) if any(n == o or n.startswith(o + ".") for o in others)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_shared_is_a_package() -> None:
    assert (ROOT / "shared" / "__init__.py").is_file()


def test_compose_parses_and_names_real_commands() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"redis", "postgres", "api", "scheduler"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    queues = {s["command"][s["command"].index("-Q") + 1] for s in workers.values()}
    assert queues == set(SERVICES)
    parser = build_parser()
    for name, service in services.items():
        command = service.get("command")
        if command and command[0] == "newsroom":
            parser.parse_args(command[1:])  # exits (fails the test) on an unknown command
        elif name not in ("redis", "postgres"):
            pytest.fail(f"{name} runs {shlex.join(command or [])}")
