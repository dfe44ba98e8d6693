"""Checkpoints for the stub engine: writing small ones (demo, tests) and reading them back.

Reading lives here rather than in engine.py because it is blocking file work that the engine runs
in a thread (asyncio.to_thread), and because the digest definition must be one function that
tests and docs can point at. numpy and safetensors are imported lazily: the benchmark starts the
stub many times and never loads weights.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

SUFFIX = ".safetensors"
# A checkpoint is a folder of shards, maybe in a few sub-folders: far inside these bounds.
MAX_DEPTH = 8
MAX_ENTRIES = 10_000


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


class CheckpointError(Exception):
    """A checkpoint that cannot be read, with the gRPC status name that says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def checkpoint_files(
    uri: str,
    deadline: float,
    *,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
) -> list[Path]:
    """Every *.safetensors file under `uri` (a directory path or file:// URI), sorted by path.

    The walk is bounded because `uri` comes off the wire: at most `max_depth` folders deep and
    `max_entries` entries seen, and it stops at `deadline` (time.monotonic()) since it runs in a
    thread that the caller's cancellation cannot stop. It does not follow symlinked folders.
    Returns [] when the directory is missing or holds no such file (NOT_FOUND in one place);
    raises CheckpointError for anything else the file system refuses.
    """
    root = checkpoint_root(uri)
    try:
        if not root.is_dir():
            return []
        found: list[Path] = []
        seen = 0
        pending = [(root, 0)]
        while pending:
            folder, depth = pending.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    seen += 1
                    _check_bounds(uri, seen, max_entries, deadline)
                    if entry.is_dir(follow_symlinks=False):
                        if depth + 1 > max_depth:
                            raise CheckpointError(
                                "INVALID_ARGUMENT",
                                f"{uri} nests folders more than {max_depth} deep: "
                                "not a checkpoint directory",
                            )
                        pending.append((Path(entry.path), depth + 1))
                    elif entry.name.endswith(SUFFIX) and entry.is_file():
                        found.append(Path(entry.path))
    except OSError as err:
        raise CheckpointError(_os_error_code(err), f"{uri}: {err.strerror or err}") from None
    return sorted(found)


def _check_bounds(uri: str, seen: int, max_entries: int, deadline: float) -> None:
    if seen > max_entries:
        message = f"{uri} holds more than {max_entries} entries: not a checkpoint directory"
        raise CheckpointError("INVALID_ARGUMENT", message)
    if seen % 64 == 0 and time.monotonic() >= deadline:
        raise CheckpointError("DEADLINE_EXCEEDED", f"listing {uri} ran out of time")


def _os_error_code(err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "NOT_FOUND"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "PERMISSION_DENIED"
    return "INVALID_ARGUMENT"  # ENAMETOOLONG, ELOOP, EINVAL...: the uri itself is bad


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
