"""The instant engine for the benchmark: `python -m bench._engine [engine_stub flags]`.

This is `python -m engine_stub --instant` itself, with one change: it does not print the
`request` JSON line engine_stub writes to stdout for every request (a json.dumps, a write and a
flush per call, for the tests' sake). Those lines would charge the stub's test interface to the
bridge and fill a pipe nobody reads. Its `ready` line is printed as usual.
"""

from __future__ import annotations

import sys
from typing import Any

import engine_stub.server as stub_server
from bench.procs import die_with_parent
from engine_stub.__main__ import main

_emit_event = stub_server.emit_event


def _quiet_emit_event(event: str, **fields: Any) -> None:
    if event != "request":
        _emit_event(event, **fields)


if __name__ == "__main__":
    die_with_parent()
    stub_server.emit_event = _quiet_emit_event
    sys.exit(main(["--instant", "--log-level", "WARNING", *sys.argv[1:]]))
