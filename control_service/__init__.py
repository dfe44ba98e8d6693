"""The control plane between RL trainers and LLM inference engines.

A trainer needs only what is re-exported here, the client::

    from control_service import ClientConfig, ControlClient

    async with ControlClient(ClientConfig(target="127.0.0.1:50051")) as control:
        await control.refit("/ckpt/step-100", "100")

or, from synchronous code, `SyncControlClient` with the same methods, without `await`.

The rest is for running and extending the service: `control-service serve` (cli/) or
`server.ControlServer`, the engine protocol in `wire` (both sides use it), and the generated
gRPC code fenced in `gen`. The client is imported on first use, not here, so that an engine
importing `control_service.protocol.wire` does not load gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_service.client import (
        ClientConfig,
        ControlClient,
        ControlError,
        EngineFailure,
        Outcome,
        ServiceStatus,
        StepTimeouts,
        SyncControlClient,
        TlsConfig,
        new_request_id,
    )

# The same names as control_service.client.__all__ (tests/unit/test_package.py holds them equal).
__all__ = ["ClientConfig", "ControlClient", "ControlError", "EngineFailure", "Outcome",
           "ServiceStatus", "StepTimeouts", "SyncControlClient", "TlsConfig",
           "new_request_id"]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("control_service.client"), name)
    raise AttributeError(f"module 'control_service' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
