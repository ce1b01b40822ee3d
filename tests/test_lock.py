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
    """The pins of the lock that apply here: name -> (version, marker, number of hashes).

    A package may be pinned twice, for different Pythons (markers); the one for this one counts.
    """
    pins: list[tuple[str, str, Marker | None, int]] = []
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            marker = Marker(match["marker"]) if match["marker"] else None
            pins.append((canonicalize_name(match["name"]), match["version"], marker, 0))
        elif line.strip().startswith("--hash=sha256:") and pins:
            name, version, marker, hashes = pins[-1]
            pins[-1] = (name, version, marker, hashes + 1)
    assert all(hashes for *_, hashes in pins), "every pin has hashes"
    return {name: (version, marker, hashes) for name, version, marker, hashes in pins if applies(marker)}


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
    assert locked()  # locked() checks every pin's hashes, whatever its markers


def test_the_lock_holds_exactly_what_the_project_needs_and_this_venv_has_it() -> None:
    """The closure of pyproject's requirements, through installed metadata, is the lock's pin set."""
    pins = locked()
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
