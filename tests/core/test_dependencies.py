"""Dependencies cannot drift: every extra is capped, every package the sessions install pinned.

``pyproject.toml`` caps each extra below the next major version it is not
tested on; ``constraints.txt`` pins the exact version of everything the nox
sessions install. A new release reaches CI only through ``nox -s
constraints`` (see ``noxfile.py``), and these tests fail when either file
leaves a package out.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
GROUPS: dict[str, list[str]] = PYPROJECT["dependency-groups"]


def _constraints() -> dict[NormalizedName, Version]:
    pinned: dict[NormalizedName, Version] = {}
    for number, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, equals, version = line.partition("==")
        assert equals, f"constraints.txt:{number}: {raw!r} is no exact pin (name==version)"
        pinned[canonicalize_name(name)] = Version(version)
    return pinned


PINNED = _constraints()


def _requirements() -> Iterator[tuple[str, Requirement]]:
    for text in PYPROJECT["project"]["dependencies"]:
        yield "dependencies", Requirement(text)
    for extra, texts in EXTRAS.items():
        for text in texts:
            yield f"extra {extra}", Requirement(text)
    for group, texts in GROUPS.items():
        for text in texts:
            yield f"group {group}", Requirement(text)


@pytest.mark.parametrize(
    "requirement",
    [text for texts in EXTRAS.values() for text in texts],
)
def test_every_extra_is_capped_below_a_major_version(requirement: str) -> None:
    """Each extra's requirement has an upper bound (``<N``): no untested major slips in."""
    specifiers = Requirement(requirement).specifier
    assert any(spec.operator in {"<", "=="} for spec in specifiers), (
        f"{requirement!r} has no upper bound: cap it below the next major version"
    )


def test_constraints_pin_every_requirement_within_its_bounds() -> None:
    """Every dependency, extra and group requirement is pinned, at a version it allows."""
    problems = []
    for where, requirement in _requirements():
        pinned = PINNED.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{where}: {requirement} is not pinned in constraints.txt")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{where}: {requirement} does not allow the pinned {pinned}")
    assert [] == problems


def _closure() -> dict[NormalizedName, str]:
    """Every installed distribution chimeway (all extras) and the groups pull in: name -> why."""
    found: dict[NormalizedName, str] = {}
    todo: list[tuple[str, frozenset[str], str]] = [
        ("chimeway", frozenset(EXTRAS), "chimeway"),
        *(
            (req.name, frozenset(req.extras), f"group {group}")
            for group, texts in GROUPS.items()
            for req in map(Requirement, texts)
        ),
    ]
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        name, extras, why = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not in this session (the core session installs no extra)
        if name != "chimeway":
            found.setdefault(key[0], why)
        for text in distribution.requires or []:
            requirement = Requirement(text)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in extras or {""}
            )
            if wanted:
                todo.append((requirement.name, frozenset(requirement.extras), f"{why} > {name}"))
    return found


def test_everything_installed_for_chimeway_and_the_groups_is_pinned() -> None:
    """What this environment installed for chimeway and the groups, transitively, is pinned."""
    closure = _closure()
    assert "chimeway" in {canonicalize_name(d.metadata["Name"]) for d in _installed()}
    missing = [f"{name} (via {why})" for name, why in sorted(closure.items()) if name not in PINNED]
    assert [] == missing, "run `nox -s constraints` and review the diff"


def _installed() -> list[importlib.metadata.Distribution]:
    return list(importlib.metadata.distributions())
