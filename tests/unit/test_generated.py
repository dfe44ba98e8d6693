"""The committed generated code is exactly what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = _gen_module().generate(tmp_path)
    assert fresh, "the generator wrote nothing"
    stale = []
    for path in fresh:
        relative = path.relative_to(tmp_path)
        committed = ROOT / relative
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(relative))
    committed_files = {
        p.relative_to(ROOT)
        for p in (ROOT / "control_service" / "gen").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    extra = committed_files - {p.relative_to(tmp_path) for p in fresh}
    assert not stale and not extra, (
        f"generated code is stale {stale} or has extra files {sorted(map(str, extra))}: "
        "run `python scripts/gen_protos.py`"
    )
