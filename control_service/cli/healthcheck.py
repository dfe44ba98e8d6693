"""`python -m control_service.cli.healthcheck`: exit 0 when the service reports SERVING, else 1.

For the container's HEALTHCHECK and exec probes, where grpcurl is not installed. It asks the
standard grpc.health.v1 service, so it sees exactly what Kubernetes' gRPC probe sees.

Inside the service's own container it needs no flags, because it reads the service's own
configuration: the target is 127.0.0.1 on the port of CONTROL_SERVICE_LISTEN, and the bearer token
is the service's own (CONTROL_SERVICE_AUTH_TOKEN or CONTROL_SERVICE_AUTH_TOKEN_FILE), so health
need not be exempted from auth. With TLS on the gRPC port it needs a CA to trust (and, with mutual
TLS, a client certificate): the flags below, or CONTROL_SERVICE_HEALTH_<FLAG> (flags win).
Exit codes: 0 SERVING, 1 anything else (Docker reserves 2, so usage errors exit 1 too).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_service.cli.params import CONTEXT, option, with_options
from control_service.protocol.names import bearer_metadata

ENV_PREFIX = "CONTROL_SERVICE_HEALTH"
UNHEALTHY = 1
FILE = click.Path(path_type=Path)


def default_target(environ: Mapping[str, str]) -> str:
    """Where the service in this container listens: CONTROL_SERVICE_LISTEN with a wildcard host
    replaced by loopback (the healthcheck runs beside the server, not across the network)."""
    listen = environ.get("CONTROL_SERVICE_LISTEN", "127.0.0.1:50051")
    if listen.startswith("unix:"):
        return listen
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"{host}:{port}"


def service_token(environ: Mapping[str, str]) -> str | None:
    """The service's own bearer token, as `serve` reads it from the environment."""
    if token := environ.get("CONTROL_SERVICE_AUTH_TOKEN"):
        return token
    if path := environ.get("CONTROL_SERVICE_AUTH_TOKEN_FILE"):
        return Path(path).read_text(encoding="utf-8").strip()
    return None


async def check(
    target: str,
    service: str,
    timeout: float,
    credentials: grpc.ChannelCredentials | None = None,
    token: str | None = None,
    options: Sequence[tuple[str, str]] = (),
) -> bool:
    """True if the health service reports `service` SERVING (RpcError if it cannot say)."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(target, options=options)
    else:
        channel = grpc.aio.secure_channel(target, credentials, options=options)
    metadata = bearer_metadata(token)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await stub.Check(request, timeout=timeout, metadata=metadata)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One check, ready to run; prints SERVING / NOT_SERVING / why it could not tell."""

    target: str
    service: str
    timeout: float
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    token: str | None = None

    async def run(self, out: TextIO, err: TextIO) -> int:
        environ = os.environ
        credentials = None
        options: list[tuple[str, str]] = []
        try:
            token = self.token or service_token(environ)
            if self.tls_ca or self.tls_cert or self.tls_key:
                files = (self.tls_ca, self.tls_key, self.tls_cert)
                credentials = grpc.ssl_channel_credentials(
                    *(p.read_bytes() if p else None for p in files)
                )
            if self.tls_server_name:
                options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        except OSError as error:
            err.write(f"unhealthy: cannot read {error.filename}: {error.strerror}\n")
            return UNHEALTHY
        try:
            serving = await check(
                self.target, self.service, self.timeout, credentials, token, options
            )
        except grpc.RpcError as error:
            hint = ""
            if credentials is None and environ.get("CONTROL_SERVICE_TLS_CERT"):
                hint = f" (the service serves TLS: set {ENV_PREFIX}_TLS_CA)"
            err.write(f"unhealthy: {error.code().name}: {error.details()}{hint}\n")
            return UNHEALTHY
        out.write("SERVING\n" if serving else "NOT_SERVING\n")
        return 0 if serving else UNHEALTHY


OPTIONS = (
    option("--target", default=lambda: default_target(os.environ),
           show_default="from CONTROL_SERVICE_LISTEN", help="HOST:PORT of the service"),
    option("--service", default="control.v1.ControlService",
           help="health service name: control.v1.ControlService (follows the engines), "
           "'' or liveness (SERVING while the process serves)"),
    option("--timeout", type=float, default=3.0, help="seconds"),
    option("--tls-ca", type=FILE, default=None, help="PEM CA to trust; enables TLS"),
    option("--tls-cert", type=FILE, default=None, help="PEM client certificate (mTLS)"),
    option("--tls-key", type=FILE, default=None, help="PEM client key (mTLS)"),
    option("--tls-server-name", default=None,
           help="the name the server certificate must carry, when not the target's host"),
    option("--token", default=None,
           help="bearer token (default: the service's own, "
           "from CONTROL_SERVICE_AUTH_TOKEN[_FILE])"),
)  # fmt: skip


def _healthcheck(**params: Any) -> HealthCheck:
    return HealthCheck(**params)


command = click.command(
    "healthcheck",
    context_settings={**CONTEXT, "auto_envvar_prefix": ENV_PREFIX},
    help=__doc__,
    short_help="exit 0 when the service reports SERVING, else 1 (for probes)",
)(with_options(OPTIONS, _healthcheck))


def main(argv: Sequence[str] | None = None) -> int:
    """The probe's entry point: usage errors exit 1 too (Docker reserves 2)."""
    from control_service.cli.app import run_command

    return run_command(
        command, argv, prog="python -m control_service.cli.healthcheck", usage_exit=UNHEALTHY
    )


if __name__ == "__main__":
    sys.exit(main())
