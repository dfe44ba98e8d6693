"""The trainer's side: an async client for ControlService, its config and its typed results.

The public names live here; `_client.py` holds the client and its results, `_config.py` its
configuration and `_utils.py` its private helpers (channel building, request ids, retries), the
way Triton's and Temporal's clients are laid out.
This package never imports the server.
"""

from control_service.client._client import ControlClient, Outcome, ServiceStatus
from control_service.client._config import ClientConfig, StepTimeouts, TlsConfig
from control_service.client._utils import new_request_id
from control_service.errors import ControlError, EngineFailure

__all__ = [
    "ClientConfig",
    "ControlClient",
    "ControlError",
    "EngineFailure",
    "Outcome",
    "ServiceStatus",
    "StepTimeouts",
    "TlsConfig",
    "new_request_id",
]
