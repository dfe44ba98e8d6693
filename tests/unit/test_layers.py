"""Dependencies point one way: cli -> server / client / engine -> protocol -> gen.

Read from the source (every import statement, at any depth, relative ones resolved), so an
import inside a function counts as much as one at the top. The engine library is checked by
path: the test covers it from the day `control_service/engine/` lands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "control_service"

# layer -> the modules it must never import (a prefix matches the module and everything below)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "client": ("control_service.server", "control_service.cli", "control_service.engine"),
    "engine": ("control_service.server", "control_service.cli", "control_service.client"),
    "protocol": (
        "control_service.server",
        "control_service.cli",
        "control_service.client",
        "control_service.engine",
        "control_service.errors",  # it is a gRPC status: the protocol stays free of grpc
        "grpc",
    ),
}


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module an import statement in `path` names (relative imports made absolute).
    `source`: the file's text, when it is not on disk."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    text = path.read_text(encoding="utf-8") if source is None else source
    found: set[str] = set()
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(layer: str) -> list[str]:
    forbidden = FORBIDDEN[layer]
    return [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for name in sorted(imported_modules(path))
        if any(name == bad or name.startswith(bad + ".") for bad in forbidden)
    ]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    assert violations(layer) == []


def test_the_check_sees_every_kind_of_import() -> None:
    """The reader itself: plain, from-, relative and nested imports are all found."""
    wire = imported_modules(PACKAGE / "protocol" / "wire.py")
    assert {"json", "control_service.protocol.names"} <= wire
    source = "def f():\n    import grpc\n    from ..server import dispatcher\n"
    found = imported_modules(PACKAGE / "protocol" / "probe.py", source)
    assert {"grpc", "control_service.server.dispatcher"} <= found
