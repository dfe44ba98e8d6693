"""Checkpoints for the stub engine: writing small ones (demo, tests) and reading them back.

Reading lives here rather than in engine.py because it is blocking file work that the engine runs
in a thread (asyncio.to_thread), and because the digest definition must be one function that
tests and docs can point at. numpy and safetensors are imported lazily: the benchmark starts the
stub many times and never loads weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SUFFIX = ".safetensors"


def write_checkpoint(
    directory: str | Path,
    *,
    files: int = 2,
    tensors_per_file: int = 2,
    shape: tuple[int, ...] = (64, 64),
    seed: int = 0,
) -> int:
    """Write `files` float32 safetensors files of random tensors; return their total size in bytes.

    The same arguments always give byte-identical files (and so the same weight digest); a
    different seed gives different contents, which is how tests prove a digest moved.
    """
    import numpy as np
    from safetensors.numpy import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for index in range(files):
        tensors = {
            f"layers.{index}.weight_{j}": rng.standard_normal(shape, dtype=np.float32)
            for j in range(tensors_per_file)
        }
        path = out / f"model-{index + 1:05d}-of-{files:05d}{SUFFIX}"
        save_file(tensors, str(path))
        total += path.stat().st_size
    return total


def checkpoint_root(uri: str) -> Path:
    """The directory a weights `uri` names: a plain path, or a file:// URI."""
    return Path(uri.removeprefix("file://"))


def checkpoint_files(uri: str) -> list[Path]:
    """Every *.safetensors file under `uri` (a directory path or file:// URI), sorted by path.

    Returns [] when the directory is missing, is not a directory or holds no such file, so the
    caller can answer NOT_FOUND in one place.
    """
    root = checkpoint_root(uri)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob(f"*{SUFFIX}") if p.is_file())


def hash_file(path: Path, digest: hashlib._Hash) -> None:
    """Feed one file's tensors into `digest`: for each tensor, sorted by name, its UTF-8 name
    then its raw (C-order, little-endian as stored) bytes.

    Raises whatever safetensors raises for a file it cannot parse; the engine turns that into
    INVALID_ARGUMENT naming the file.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name)
            digest.update(name.encode("utf-8"))
            digest.update(tensor.tobytes(order="C"))
