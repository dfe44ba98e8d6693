"""The client's configuration: frozen dataclasses, validated when built (as Temporal's
`service.py` keeps its connect options apart from the client that uses them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from control_service.client import _utils as utils
from control_service.errors import invalid


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the channel: a root CA to trust, and optionally a client cert+key for mTLS.

    With no root_cert the system's trust store is used. `server_name_override` is for test
    certificates whose subject does not match the target host.
    """

    root_cert: Path | None = None
    cert_chain: Path | None = None
    private_key: Path | None = None
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_chain is None) != (self.private_key is None):
            raise invalid("a TLS client certificate needs both a certificate chain and a key")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials; reads the PEM files now so a bad path fails at connect."""
        return grpc.ssl_channel_credentials(
            root_certificates=utils.read_optional(self.root_cert),
            private_key=utils.read_optional(self.private_key),
            certificate_chain=utils.read_optional(self.cert_chain),
        )


@dataclass(frozen=True, slots=True)
class StepTimeouts:
    """Per-step limits of a Refit (seconds; None: only the overall timeout applies). `stage`
    bounds the staging step of a `refit(stage=True)`; `update` then bounds only the commit."""

    pause: float | None = None
    update: float | None = None
    resume: float | None = None
    stage: float | None = None

    def items(self) -> list[tuple[str, float]]:
        return [
            (name, utils.check_timeout(value))  # type: ignore[misc]
            for name, value in (
                ("pause", self.pause),
                ("update", self.update),
                ("resume", self.resume),
                ("stage", self.stage),
            )  # fmt: skip
            if value is not None
        ]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a `ControlClient` needs, validated once when built.

    timeout_s: the operation timeout sent with each mutating call (None: the server's default);
        the transport deadline is this plus `deadline_margin_s`, so that the server, not the
        client, reports which engines were late.
    status_timeout_s: deadline of GetStatus when the call gives none.
    retries: how many times an UNAVAILABLE call is retried with the same request id.
    keepalive_time_s: HTTP/2 ping interval while a call is open (None: no pings).
    channel_options: extra grpc channel options, applied last (they win).
    """

    target: str = "127.0.0.1:50051"
    timeout_s: float | None = None
    status_timeout_s: float = 10.0
    deadline_margin_s: float = 5.0
    retries: int = 0
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 2.0
    tls: TlsConfig | None = None
    bearer_token: str | None = None
    keepalive_time_s: float | None = 30.0
    keepalive_timeout_s: float = 10.0
    channel_options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.target:
            raise invalid("client target must be 'host:port'")
        utils.check_timeout(self.timeout_s)
        for name in ("status_timeout_s", "keepalive_timeout_s", "retry_backoff_s"):
            if not getattr(self, name) > 0:
                raise invalid(f"{name} must be > 0")
        if self.keepalive_time_s is not None and not self.keepalive_time_s > 0:
            raise invalid("keepalive_time_s must be > 0 or None")
        if self.deadline_margin_s < 0 or self.retries < 0:
            raise invalid("deadline_margin_s and retries must be >= 0")
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise invalid("retry_backoff_max_s must be >= retry_backoff_s")

    def options(self) -> list[tuple[str, Any]]:
        """The grpc channel options this config implies, the caller's own last."""
        options = utils.keepalive_options(self.keepalive_time_s, self.keepalive_timeout_s)
        if self.tls is not None and self.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name_override))
        return options + list(self.channel_options)

    def transport_deadline(self, timeout_s: float | None) -> float | None:
        """The gRPC deadline for an operation timeout: the timeout plus `deadline_margin_s`, so
        the server ends a late call itself, with a DEADLINE_EXCEEDED naming each late engine,
        instead of the client cutting the stream with a bare status. None: no deadline."""
        return None if timeout_s is None else timeout_s + self.deadline_margin_s

    def retry_delay_s(self, attempt: int) -> float:
        """The pause before retry number `attempt` (1-based): exponential, capped."""
        return min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** (attempt - 1))
