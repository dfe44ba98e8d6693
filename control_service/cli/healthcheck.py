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

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_service.protocol.names import bearer_metadata

ENV_PREFIX = "CONTROL_SERVICE_HEALTH_"
UNHEALTHY = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(UNHEALTHY, f"{self.prog}: error: {message}\n")


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


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(flag: str, default: str | None = None) -> str | None:
        return environ.get(ENV_PREFIX + flag.upper().replace("-", "_"), default)

    parser = _Parser(
        prog="python -m control_service.cli.healthcheck",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--target",
        default=env("target", default_target(environ)),
        help="HOST:PORT of the service (default: from CONTROL_SERVICE_LISTEN)",
    )
    add(
        "--service",
        default=env("service", "control.v1.ControlService"),
        help="health service name: control.v1.ControlService (default; follows the engines), "
        "'' or liveness (SERVING while the process serves)",
    )
    add("--timeout", type=float, default=env("timeout", "3"), help="seconds")
    add("--tls-ca", type=Path, default=env("tls-ca"), help="PEM CA to trust; enables TLS")
    add("--tls-cert", type=Path, default=env("tls-cert"), help="PEM client certificate (mTLS)")
    add("--tls-key", type=Path, default=env("tls-key"), help="PEM client key (mTLS)")
    add(
        "--tls-server-name",
        default=env("tls-server-name"),
        help="the name the server certificate must carry, when not the target's host",
    )
    add(
        "--token",
        default=env("token"),
        help="bearer token (default: the service's own, from CONTROL_SERVICE_AUTH_TOKEN[_FILE])",
    )
    return parser


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


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Check once and print SERVING / NOT_SERVING / why it could not tell; 0 only if SERVING."""
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    credentials = None
    options: list[tuple[str, str]] = []
    try:
        token = args.token or service_token(environ)
        if args.tls_ca or args.tls_cert or args.tls_key:
            credentials = grpc.ssl_channel_credentials(
                *(p.read_bytes() if p else None for p in (args.tls_ca, args.tls_key, args.tls_cert))
            )
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    except OSError as err:
        print(f"unhealthy: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return UNHEALTHY
    try:
        serving = asyncio.run(
            check(args.target, args.service, args.timeout, credentials, token, options)
        )
    except grpc.RpcError as err:
        hint = ""
        if credentials is None and environ.get("CONTROL_SERVICE_TLS_CERT"):
            hint = f" (the service serves TLS: set {ENV_PREFIX}TLS_CA)"
        print(f"unhealthy: {err.code().name}: {err.details()}{hint}", file=sys.stderr)
        return UNHEALTHY
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
