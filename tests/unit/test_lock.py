"""The lock (constraints.txt) is current with pyproject.toml, offline.

A full re-resolve (`uv pip compile`) needs the package index and answers differently as releases
appear, so it is the refresh command (README), not a test. What is checked here, without the
network: every requirement of pyproject.toml (base, `fast`, `otel` and `test` extras) is pinned in
the lock and its pin satisfies the range; every pin's own requirements (read from the installed
package's metadata) are pinned too; the lock's header names the refresh command the README gives;
pyproject.toml upper-bounds nothing by hand; and under CI, where the README's install used the
lock, what is installed is exactly what the lock says.
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
REFRESH = "uv pip compile pyproject.toml --extra test --python-version 3.11 -o constraints.txt"
# Pinned by hand on purpose: tests/unit/test_generated.py compares its output byte for byte.
EXACT_BY_HAND = {"grpcio-tools"}
PROJECT = "control-service"


def pins() -> dict[str, Version]:
    found = {}
    for line in LOCK.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;#]+)", line.strip())
        if match:
            found[canonicalize_name(match.group(1))] = Version(match.group(2))
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in ("fast", "otel", "test"):
        listed += project["optional-dependencies"][extra]
    return [Requirement(text) for text in listed]


def test_every_requirement_is_pinned_within_its_range() -> None:
    locked = pins()
    checked = 0
    for req in requirements():
        name = canonicalize_name(req.name)
        if name == PROJECT or (req.marker is not None and not req.marker.evaluate()):
            continue
        assert name in locked, f"{req} is not in constraints.txt: refresh the lock ({REFRESH})"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"constraints.txt pins {name}=={locked[name]}, outside {req}: refresh the lock"
        )
        checked += 1
    assert checked >= 20


def test_lock_is_closed_over_the_pins_own_requirements() -> None:
    locked = pins()
    missing = []
    for name in locked:
        try:
            needs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (another platform's marker): nothing to read
        for text in needs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) not in locked:
                missing.append(f"{name} needs {req}")
    assert not missing, f"constraints.txt lacks: {missing}; refresh it ({REFRESH})"


def test_lock_header_and_readme_name_the_refresh_command() -> None:
    assert REFRESH in LOCK.read_text().splitlines()[1]
    assert REFRESH in (ROOT / "README.md").read_text()


def test_pyproject_upper_bounds_nothing_by_hand() -> None:
    for req in requirements():
        for spec in req.specifier:
            bounded = spec.operator in ("<", "<=", "~=", "===") or (
                spec.operator == "==" and canonicalize_name(req.name) not in EXACT_BY_HAND
            )
            assert not bounded, f"{req}: the lock pins versions; pyproject.toml gives lower bounds"


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="a developer venv may predate the lock")
def test_installed_is_what_the_lock_says() -> None:
    drift = {}
    for name, version in pins().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
        if installed != version:
            drift[name] = (str(installed), str(version))
    assert not drift, f"installed vs locked: {drift}"
