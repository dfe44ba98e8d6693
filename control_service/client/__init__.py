"""The trainer's side: an async and a blocking client for ControlService, their config and
typed results.

The public names live here; `_client.py` holds the async client, its results and what both
clients share (request building, retries, the event log), `_sync.py` the blocking client,
`_config.py` their configuration and `_utils.py` their private helpers (channel building,
request ids), the way Triton's and Temporal's clients are laid out.
This package never imports the server.
"""

from control_service.client._client import ControlClient, Outcome, ServiceStatus
from control_service.client._config import ClientConfig, StepTimeouts, TlsConfig
from control_service.client._sync import SyncControlClient
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
    "SyncControlClient",
    "TlsConfig",
    "new_request_id",
]
