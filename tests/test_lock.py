"""requirements.lock and pyproject.toml agree, and this environment is exactly the lock.

`make lock` writes the lock from pyproject.toml; these checks fail when someone edits one
and not the other: a requirement with no pin or with a pin outside its range, a pin that
nothing requires any more, a pin without hashes, or an installed version off the lock.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)


def locked() -> dict[str, tuple[str, Marker | None, int]]:
    """Each pin of the lock: name -> (version, marker, number of hashes)."""
    pins: dict[str, tuple[str, Marker | None, int]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            marker = Marker(match["marker"]) if match["marker"] else None
            current = canonicalize_name(match["name"])
            pins[current] = (match["version"], marker, 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, marker, hashes = pins[current]
            pins[current] = (version, marker, hashes + 1)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(text) for text in names]


def applies(marker: Marker | None, extra: str = "") -> bool:
    return marker is None or marker.evaluate({"extra": extra})


def test_every_declared_requirement_is_pinned_within_its_range() -> None:
    pins = locked()
    for requirement in declared():
        if not applies(requirement.marker):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{requirement} is in pyproject.toml but not in requirements.lock: run `make lock`"
        )
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject's {requirement}: run `make lock`"
        )


def test_every_pin_has_hashes() -> None:
    unhashed = [name for name, (_, _, hashes) in locked().items() if hashes == 0]
    assert not unhashed


def test_the_lock_holds_exactly_what_the_project_needs_and_this_venv_has_it() -> None:
    """The closure of pyproject's requirements, through installed metadata, is the lock's pin set."""
    pins = {name: pin for name, pin in locked().items() if applies(pin[1])}
    needed: set[str] = set()
    todo = [(requirement, "") for requirement in declared()]
    while todo:
        requirement, extra = todo.pop()
        if not applies(requirement.marker, extra):
            continue
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in needed:
            continue
        needed.add(key)
        for dependency in metadata.requires(name) or []:
            child = Requirement(dependency)
            for wanted in requirement.extras or {""}:
                if applies(child.marker, wanted):
                    todo.append((child, wanted))
    names = {key.split("[")[0] for key in needed}
    assert names - set(pins) == set(), "required but not pinned: run `make lock`"
    assert set(pins) - names == set(), "pinned but required by nothing: run `make lock`"
    off = {
        name: (metadata.version(name), pins[name][0])
        for name in names
        if metadata.version(name) != pins[name][0]
    }
    assert not off, f"installed versions differ from the lock (run `make install`): {off}"
