"""Regenerate the Python code for protos/ into control_service/gen/ (never edit it by hand).

Run: python scripts/gen_protos.py [OUT_DIR]

The proto path is mapped (`-Icontrol_service/gen=protos`) so that protoc writes imports such as
`from control_service.gen.control.v1 import control_pb2`: the generated code lives fenced in its
own package with no import rewriting, while the proto package users see stays `control.v1`.
tests/test_generated.py regenerates into a temporary folder and compares with what is committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN_PACKAGE = "control_service/gen"


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under protos/ into out_dir; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(GEN_PACKAGE / p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    for source in sources:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{GEN_PACKAGE}={PROTOS}",
                f"-I{include}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                source,
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {source} (exit {code})")
    package_root = out_dir / GEN_PACKAGE
    for folder in [package_root, *(p for p in package_root.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return sorted(p for p in package_root.rglob("*") if p.is_file())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path.relative_to(target))
