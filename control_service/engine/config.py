"""The engine server's configuration: where it listens, who may connect, and its bounds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from control_service.protocol import wire


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """ZMQ CURVE: this engine's key pair (a zmq.auth `.key_secret` file) encrypts the link, and
    only the client public keys (`.key` files) in `allowed_clients` may connect. Without an
    allow-list anyone holding the engine's public key can connect."""

    secret_key: Path
    allowed_clients: Path | None = None

    def __post_init__(self) -> None:
        """Refuse bad key material here, as one line, not later as a socket traceback."""
        self.keys()
        if self.allowed_clients is not None and not self.allowed_clients.is_dir():
            raise ValueError(f"{self.allowed_clients} is not a folder")

    def keys(self) -> tuple[bytes, bytes]:
        """(public, secret) from the key pair file; ValueError naming what is wrong."""
        import zmq.auth

        try:
            public, secret = zmq.auth.load_certificate(self.secret_key)
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.secret_key}: not a zmq.auth key file ({err})") from None
        if secret is None:
            raise ValueError(f"{self.secret_key}: no secret key (give the .key_secret file)")
        return public, secret


@dataclass(frozen=True, slots=True)
class EngineServerConfig:
    """bind: `tcp://HOST:PORT` (port 0: any free port) or `ipc:///path` (at most 107 chars).

    Bounds: a frame over `max_frame_bytes` is refused before it is parsed; at most
    `max_status_in_flight` status calls run at once (more get RESOURCE_EXHAUSTED); the last
    `outcome_records` mutation outcomes are remembered for `outcome_ttl_s` seconds, so a retry
    with the same request_id (a restarted service) is answered from the record and never runs
    the mutation twice.
    """

    bind: str
    name: str = "engine"
    curve: CurveConfig | None = None
    max_frame_bytes: int = wire.MAX_FRAME_BYTES
    max_status_in_flight: int = 64
    outcome_records: int = 1024
    outcome_ttl_s: float = 600.0
