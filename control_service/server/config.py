"""Configuration as frozen dataclasses: one object per concern, validated when built.

Defaults are the ones an RL loop wants: fail fast on a dead engine (heartbeats well under the
2 s liveness bound), generous timeouts for weight loading, bounded tables everywhere.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import zmq.auth

from control_service.protocol.names import ABORT, PAUSE_MODES, PauseMode

ENGINE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ConfigError(Exception):
    """A configuration the service cannot start with: a plain error, not a call's status.

    `fields` names the configuration fields at fault (e.g. ("tls_cert", "tls_key")), so a front
    end can point at its own spelling of them (a flag, a variable) while this layer names none.
    """

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One engine: a name trainers see in events, and the ZMQ endpoint its ROUTER binds."""

    name: str
    endpoint: str

    def __post_init__(self) -> None:
        if not ENGINE_NAME.match(self.name):
            raise ConfigError(
                f"engine name {self.name!r} must be 1-64 characters of [A-Za-z0-9._-]"
            )
        if not self.endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(
                f"engine endpoint {self.endpoint!r} must be tcp://, ipc:// or inproc://"
            )

    @classmethod
    def parse(cls, text: str, default_name: str = "engine") -> EngineConfig:
        """'NAME=ENDPOINT' or a bare 'ENDPOINT' (named `default_name`)."""
        name, sep, endpoint = text.partition("=")
        if not sep or "://" in name:
            return cls(default_name, text)
        return cls(name, endpoint)


MAX_ENGINES = 4096
# An engines file is read whole on every change: 4,096 lines of a long NAME=ENDPOINT fit.
MAX_ENGINES_FILE_BYTES = 1 << 20


def load_engines(path: Path) -> list[EngineConfig]:
    """Engines from a file: one [NAME=]ENDPOINT per line; blank lines and # comments skipped.
    Unnamed lines are named engine-<line number>. Bounded: at most MAX_ENGINES engines and
    MAX_ENGINES_FILE_BYTES bytes (the file is watched: a runaway writer must not fill memory)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_ENGINES_FILE_BYTES + 1)
        if len(data) > MAX_ENGINES_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_ENGINES_FILE_BYTES} bytes")
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read engines file {path}: {err}") from None
    engines: list[EngineConfig] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            engines.append(EngineConfig.parse(text, default_name=f"engine-{number}"))
        except ConfigError as err:
            raise ConfigError(f"{path}:{number}: {err.message}") from None
        if len(engines) > MAX_ENGINES:
            raise ConfigError(f"{path}: more than {MAX_ENGINES} engines")
    if not engines:
        raise ConfigError(f"{path}: no engines listed")
    names = [e.name for e in engines]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: engine names must be unique")
    return engines


def load_engines_beside(path: Path, fixed: Sequence[EngineConfig]) -> list[EngineConfig]:
    """The engines file at start: a bad file, or one naming an engine the flags give (`fixed`),
    is a ConfigError. One check for the CLI (before embedded engines start) and the service."""
    engines = load_engines(path)
    clash = sorted({e.name for e in engines} & {e.name for e in fixed})
    if clash:
        raise ConfigError(
            f"{path}: engine names also given as flags: {', '.join(clash)}", "engines_file"
        )
    return engines


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """How the service talks to each engine over ZMQ."""

    heartbeat_ivl_s: float = 0.2
    heartbeat_timeout_s: float = 0.6
    # Heartbeats a second, all links together, at most: past heartbeat_rate * heartbeat_ivl_s
    # links (200 by default) the interval and timeout grow with the links, up to
    # heartbeat_ivl_max_s (see `for_links`).
    heartbeat_rate: float = 1000.0
    heartbeat_ivl_max_s: float = 2.0
    reconnect_ivl_s: float = 0.1
    reconnect_ivl_max_s: float = 1.0
    max_frame_bytes: int = 1 << 20
    # Outgoing requests queued on the socket at most; past it a send fails with UNAVAILABLE.
    send_hwm: int = 10_000
    # Incoming messages libzmq's I/O thread queues for us. While the queue has room it keeps
    # reading the connection, heartbeats included, whatever our event loop is doing: an engine
    # is declared dead for its own silence, not for a moment of ours (libzmq's default of 1,000
    # is one burst of progress; past the bound it stops reading, and the heartbeat fails).
    recv_hwm: int = 100_000
    # Status probes in flight per engine. Their own bound, apart from the calls' slot budget, so
    # that many GetStatus against a slow engine never refuse a mutation.
    max_status_probes: int = 64
    # CURVE: the engines' public key and this service's key pair (zmq.auth certificate files).
    curve_server_key: Path | None = None
    curve_client_key: Path | None = None

    def __post_init__(self) -> None:
        if min(self.heartbeat_ivl_s, self.heartbeat_timeout_s, self.heartbeat_rate) <= 0:
            raise ConfigError(
                "heartbeat interval, timeout and rate must be > 0",
                "heartbeat_ivl_s",
                "heartbeat_timeout_s",
                "heartbeat_rate",
            )
        if (self.curve_server_key is None) != (self.curve_client_key is None):
            raise ConfigError(
                "the CURVE server key and client key go together",
                "curve_server_key",
                "curve_client_key",
            )
        for path in (self.curve_server_key, self.curve_client_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path} is not a readable file")
        if self.curve_server_key is not None and self.curve_client_key is not None:
            # Checked here so a wrong file is a one-line configuration error at start, not a
            # traceback from the socket options when the link first connects.
            _curve_keys(self.curve_server_key, need_secret=False)
            _curve_keys(self.curve_client_key, need_secret=True)

    def for_links(self, links: int) -> LinkConfig:
        """The configuration each of `links` links uses: heartbeats slowed so that all of them
        together send at most `heartbeat_rate` a second. Each heartbeat is a timer, a PING and
        a PONG on libzmq's one I/O thread (~25 us of its CPU here), so at a fixed interval their
        cost grows with the links (1,024 links at 200 ms: 22% of a core, idle) and, per call to
        every engine, with the call's length too: the one cost that grew faster than the
        engines. The interval is links / heartbeat_rate, never below heartbeat_ivl_s (the
        floor) nor, from scaling, above heartbeat_ivl_max_s (the ceiling), and the timeout keeps
        its ratio to it: with the defaults, 1,024 links beat every 1.02 s and a frozen engine is
        found within 3.1 s (at most 6 s, from 2,000 links). An engine that exits or closes its
        connection is found at once, whatever the heartbeats."""
        interval = min(links / self.heartbeat_rate, self.heartbeat_ivl_max_s)
        if interval <= self.heartbeat_ivl_s:
            return self
        scale = interval / self.heartbeat_ivl_s
        return replace(
            self, heartbeat_ivl_s=interval, heartbeat_timeout_s=self.heartbeat_timeout_s * scale
        )


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may talk to the service: TLS (mutual with a client CA) and a bearer token."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    # With it, clients must present a certificate signed by this CA (mutual TLS).
    tls_client_ca: Path | None = None
    # Prefer the file or the CONTROL_SERVICE_AUTH_TOKEN variable: a flag shows up in `ps`.
    auth_token: str | None = None
    auth_token_file: Path | None = None
    # Leave grpc.health.v1 open without a token (for probes that cannot send one).
    auth_exempt_health: bool = False

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("the TLS certificate and key go together", "tls_cert", "tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "a client CA (mutual TLS) needs the server's TLS certificate and key",
                "tls_client_ca",
                "tls_cert",
            )
        if self.auth_token is not None and self.auth_token_file is not None:
            raise ConfigError(
                "give the token once: as a value or as a file", "auth_token", "auth_token_file"
            )
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca, self.auth_token_file):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path} is not a readable file")
        if self.tls_cert is not None and self.tls_key is not None:
            # gRPC reports a bad PEM only as "cannot bind": check the files the same way here.
            _check_tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)

    def token(self) -> str | None:
        """The bearer token, read once at start; None means no token is required. The same rule
        whichever its source (flag, environment, file): see `bearer_token`."""
        if self.auth_token_file is not None:
            try:
                text = self.auth_token_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(
                    f"cannot read the auth token file: {err}", "auth_token_file"
                ) from None
            return bearer_token(text, f"the file {self.auth_token_file}", "auth_token_file")
        if self.auth_token is not None:
            return bearer_token(self.auth_token, "the service's configuration", "auth_token")
        return None


_TOKEN_CHARS = re.compile(r"[\x21-\x7e]{16,4096}")


def bearer_token(text: str, source: str, *fields: str) -> str:
    """Surrounding whitespace (a file's or a variable's trailing newline) is dropped; what is
    left must be 16-4,096 visible ASCII characters, the only ones a caller can send in an
    `authorization` header. A token outside that is refused at start: accepted, it would lock
    every caller out. The token itself is never echoed."""
    token = text.strip()
    if _TOKEN_CHARS.fullmatch(token) is None:
        raise ConfigError(
            f"the auth token from {source} must be 16-4096 visible ASCII characters "
            f"(no spaces, control or non-ASCII characters); got {len(token)} characters",
            *fields,
        )
    return token


def _curve_keys(path: Path, need_secret: bool) -> None:
    """Refuse a file that is not a zmq.auth certificate (or lacks the secret key we need)."""
    try:
        _public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a zmq.auth CURVE key file ({err})") from None
    if need_secret and secret is None:
        raise ConfigError(f"{path}: has no secret key (give the .key_secret file)")


def _no_password() -> str:
    return ""  # an encrypted key fails to load instead of prompting on a terminal


def _check_tls_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Load the PEM files as a TLS server would: a certificate chain with its matching key, and
    the client CA's certificates; any problem is a one-line reason."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"{cert} / {key}: need a PEM certificate chain and its matching unencrypted key ({err})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"{client_ca}: not PEM CA certificates ({err})") from None


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    engines: tuple[EngineConfig, ...]
    listen: str = "127.0.0.1:50051"
    link: LinkConfig = field(default_factory=LinkConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    default_timeout_s: float = 120.0
    max_timeout_s: float = 900.0
    default_pause_mode: PauseMode = ABORT
    status_timeout_s: float = 2.0
    # Every engine is asked for its status when its link comes up and then this often: its
    # capabilities (checked before a call is sent) and whether the engine behind an adapter is
    # reachable (readiness). 0: only at link-up; None: never (no capability check, readiness
    # from the links alone: what in-process tests of other behaviour use, to count frames exactly).
    engine_probe_interval_s: float | None = 5.0
    # Status probes a second, all engines together, at most: with more engines than
    # engine_probe_rate * engine_probe_interval_s (1,000 by default) the rounds are further apart
    # (`probe_interval_s`). Each probe costs the service ~150 us of CPU: 4,096 engines every 5 s
    # took 16% of a core, idle, and half the messages of a run of Refits.
    engine_probe_rate: float = 200.0
    # Open reply slots across all engines; past it a call gets RESOURCE_EXHAUSTED.
    max_open_slots: int = 4096
    # Events buffered per caller before the oldest progress events are dropped (never a result).
    slot_queue_events: int = 256
    # Callers attached to one operation (same request_id) at most; past it RESOURCE_EXHAUSTED.
    # Each engine reply is handed to every attached caller: this bounds that work per reply.
    max_callers_per_operation: int = 64
    # HTTP/2 streams (calls) one client connection may have open at once.
    max_concurrent_streams: int = 1024
    max_message_bytes: int = 64 * 1024
    # How long, and how many, finished operations are remembered so a retry replays the outcome.
    retry_window_s: float = 600.0
    retry_max_records: int = 1024
    # An operation whose every caller went away keeps running this long, so that a retry with
    # the same request_id (a trainer that lost its connection) can attach; then it is cancelled
    # at the engine. 0 cancels at once.
    detach_grace_s: float = 5.0
    shutdown_grace_s: float = 10.0
    # Prometheus /metrics on this HTTP port, on the gRPC listen host; 0 means off.
    metrics_port: int = 0
    # Or HOST:PORT for /metrics (wins over metrics_port): e.g. 0.0.0.0:9090 for a scraper
    # outside the pod while gRPC listens on loopback only.
    metrics_listen: str = ""
    # Engines that come and go (membership.py): besides `engines` (fixed), a file re-read when
    # it changes (polled this often, and on SIGHUP) and a DNS name NAME:PORT whose A/AAAA
    # records are the engines (a Kubernetes headless Service), re-resolved this often.
    engines_file: Path | None = None
    engines_file_interval_s: float = 2.0
    engines_dns: str = ""
    engines_dns_interval_s: float = 5.0
    # HOST[:PORT] of the DNS server to ask instead of the system's (tests; odd clusters).
    dns_server: str = ""
    # A removed engine with calls in flight keeps its link this long for them to finish; then
    # they end UNAVAILABLE. It gets no new calls meanwhile.
    engine_leave_grace_s: float = 60.0
    # Readiness (health SERVING) needs this many engines up; 0: every engine (a fixed fleet).
    ready_min_engines: int = 0

    def __post_init__(self) -> None:
        if not self.engines and self.engines_file is None and not self.engines_dns:
            raise ConfigError("at least one engine is required")
        if self.engines_dns:
            _host_port(self.engines_dns, "the engines DNS name", "engines_dns")
        if self.dns_server:
            dns_server_address(self.dns_server)
        for name in ("engines_file_interval_s", "engines_dns_interval_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0", name)
        if self.engine_leave_grace_s < 0 or self.ready_min_engines < 0:
            raise ConfigError(
                "engine leave grace and ready min engines must be >= 0",
                "engine_leave_grace_s", "ready_min_engines",
            )  # fmt: skip
        names = [e.name for e in self.engines]
        if len(set(names)) != len(names):
            raise ConfigError(f"engine names must be unique, got {names}")
        if self.default_pause_mode not in PAUSE_MODES:
            raise ConfigError(
                f"default pause mode must be one of {PAUSE_MODES}", "default_pause_mode"
            )
        if self.detach_grace_s < 0 or self.retry_window_s < 0:
            raise ConfigError(
                "detach grace and retry window must be >= 0", "detach_grace_s", "retry_window_s"
            )
        if self.engine_probe_interval_s is not None and self.engine_probe_interval_s < 0:
            raise ConfigError("engine probe interval must be >= 0", "engine_probe_interval_s")
        if not self.engine_probe_rate > 0:
            raise ConfigError("engine probe rate must be > 0", "engine_probe_rate")
        if not 0 < self.default_timeout_s <= self.max_timeout_s:
            raise ConfigError(
                "need 0 < default timeout <= max timeout", "default_timeout_s", "max_timeout_s"
            )
        for name in (
            "max_open_slots",
            "slot_queue_events",
            "retry_max_records",
            "max_callers_per_operation",
            "max_concurrent_streams",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1", name)
        if self.metrics_listen:
            _host_port(self.metrics_listen, "the metrics address", "metrics_listen")

    def probe_interval_s(self, engines: int | None = None) -> float | None:
        """Seconds between the service's own probe rounds for `engines` engines (default: the
        fixed ones): the configured interval, or longer so that a round of every engine keeps
        within engine_probe_rate. 0: only at link changes; None: never."""
        interval = self.engine_probe_interval_s
        if not interval:
            return interval
        count = len(self.engines) if engines is None else engines
        return max(interval, count / self.engine_probe_rate)

    @property
    def dynamic(self) -> bool:
        """Engines may come and go: an engines file or a DNS name is configured."""
        return self.engines_file is not None or bool(self.engines_dns)

    def metrics_address(self) -> tuple[str, int] | None:
        """Where /metrics is served, or None when off. Without metrics_listen: the gRPC listen
        host (never every interface unless gRPC itself listens on every interface)."""
        if self.metrics_listen:
            return _host_port(self.metrics_listen, "the metrics address", "metrics_listen")
        if not self.metrics_port:
            return None
        host = "127.0.0.1" if self.listen.startswith("unix:") else self.listen.rpartition(":")[0]
        return host.strip("[]") or "127.0.0.1", self.metrics_port


def dns_server_address(text: str) -> tuple[str, int]:
    """IP[:PORT] of a DNS server (port 53 by default; [v6]:PORT for IPv6 with a port). An IP,
    not a name: the resolver that would look the name up is the one being replaced."""
    if text.startswith("[") or text.count(":") == 1:
        host, port = _host_port(text, "the DNS server", "dns_server")
    else:
        host, port = text, 53
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"the DNS server {text!r} must be IP[:PORT] ([IPv6]:PORT)", "dns_server"
        ) from None
    return host, port


def _host_port(text: str, what: str, *fields: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{what} {text!r} must be HOST:PORT with a port in 1-65535", *fields)
    return host.strip("[]"), int(port)
