"""The CLI's exit codes: stable, documented in every command's help, parsed by scripts."""

from __future__ import annotations

import grpc

OK = 0
FAILURE = 1  # unexpected failure (the demo's own checks, an engine that did not start)
USAGE = 2  # bad usage or configuration; one line on stderr says why
GRPC_BASE = 100  # a call failed with gRPC status code c: exit 100 + c
INTERRUPTED = 130


def for_status(code: grpc.StatusCode) -> int:
    """The exit code of a call that failed with `code`."""
    return GRPC_BASE + code.value[0]


def _example(code: grpc.StatusCode) -> str:
    return f"{for_status(code)} {code.name}"


HELP = (
    "Exit codes: 0 success; 1 unexpected failure (e.g. the demo's own checks, an engine that "
    "did not start); 2 bad usage or configuration (one line on stderr says why); 100+CODE the "
    "call failed with gRPC status CODE, e.g. "
    + ", ".join(
        _example(c)
        for c in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.UNAVAILABLE,
        )
    )
    + "; 130 interrupted (Ctrl-C)."
)
