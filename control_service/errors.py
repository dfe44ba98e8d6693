"""One error type for the whole service: a value that carries its gRPC status.

Everything below the servicer raises or returns `ControlError`; the servicer maps it to gRPC once,
at the edge (`status.abort`). Per-engine failures of a fanned-out call are kept as `failures` so
the final status can name each engine and carry one ErrorInfo per engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True, slots=True)
class EngineFailure:
    engine: str
    code: grpc.StatusCode
    message: str


@dataclass(eq=False)
class ControlError(Exception):
    code: grpc.StatusCode
    message: str
    failures: tuple[EngineFailure, ...] = field(default=())

    def __post_init__(self) -> None:
        super().__init__(f"{self.code.name}: {self.message}")

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def status_code(name: str) -> grpc.StatusCode:
    """A gRPC status name from the engine protocol ('NOT_FOUND') as a StatusCode."""
    try:
        return grpc.StatusCode[name]
    except KeyError:
        return grpc.StatusCode.UNKNOWN


def invalid(message: str) -> ControlError:
    return ControlError(grpc.StatusCode.INVALID_ARGUMENT, message)


def unavailable(message: str) -> ControlError:
    return ControlError(grpc.StatusCode.UNAVAILABLE, message)
