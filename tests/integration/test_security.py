"""TLS, mutual TLS and bearer-token auth on the gRPC port (certificates made at test time)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from control_service.server.config import SecurityConfig
from tests.certs import make_ca, make_leaf
from tests.harness import StartService
from tests.stub_process import StubProcess

Code = grpc.StatusCode
TOKEN = "s3cret-token-for-tests-0123456789"


async def status(channel: grpc.aio.Channel, **kw: object) -> pb.GetStatusResponse:
    return await control_pb2_grpc.ControlServiceStub(channel).GetStatus(
        pb.GetStatusRequest(), timeout=5, **kw
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    ca_pair, ca, ca_key = make_ca(tmp_path, "ca")
    _other_pair, other, other_key = make_ca(tmp_path, "other-ca")
    return {
        "ca": ca_pair,
        "server": make_leaf(tmp_path, "server", ca, ca_key, server=True),
        "client": make_leaf(tmp_path, "client", ca, ca_key, server=False),
        "stranger": make_leaf(tmp_path, "stranger", other, other_key, server=False),
    }


async def test_tls_serves_tls_clients_only(
    start_service: StartService, start_stub: Callable[..., StubProcess], pki: dict
) -> None:
    stub = start_stub()
    security = SecurityConfig(tls_cert=pki["server"].cert, tls_key=pki["server"].key)
    service = await start_service([stub.endpoint], security=security)
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].cert.read_bytes())
    async with grpc.aio.secure_channel(service.target, creds) as channel:
        assert (await status(channel)).engines[0].reachable
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await status(service.channel)  # the harness's plaintext channel
    assert info.value.code() == Code.UNAVAILABLE


async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    start_service: StartService, start_stub: Callable[..., StubProcess], pki: dict
) -> None:
    stub = start_stub()
    security = SecurityConfig(
        tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=pki["ca"].cert
    )
    service = await start_service([stub.endpoint], security=security)
    root = pki["ca"].cert.read_bytes()

    def creds(pair: object | None) -> grpc.ChannelCredentials:
        if pair is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        return grpc.ssl_channel_credentials(root, pair.key.read_bytes(), pair.cert.read_bytes())  # type: ignore[attr-defined]

    async with grpc.aio.secure_channel(service.target, creds(pki["client"])) as channel:
        assert (await status(channel)).engines[0].reachable
    for refused in (None, pki["stranger"]):
        async with grpc.aio.secure_channel(service.target, creds(refused)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await status(channel)
            assert info.value.code() == Code.UNAVAILABLE


async def test_bearer_token_missing_wrong_right_and_health_exemption(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    stub = start_stub()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    security = SecurityConfig(auth_token_file=token_file, auth_exempt_health=True)
    service = await start_service([stub.endpoint], security=security)
    for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", TOKEN),)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await status(service.channel, metadata=metadata)
        assert info.value.code() == Code.UNAUTHENTICATED
    err, _ = await service.failed("Pause", pb.PauseRequest(), timeout=5)
    assert err.code() == Code.UNAUTHENTICATED, "streaming methods are guarded too"
    reply = await status(service.channel, metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert reply.engines[0].reachable
    health = health_pb2_grpc.HealthStub(service.channel)
    check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING, "health left open by flag"


def test_bad_security_configuration_is_refused(tmp_path: Path) -> None:
    from control_service.server.config import ConfigError

    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="go together") as info:
        SecurityConfig(tls_cert=short)
    assert info.value.fields == ("tls_cert", "tls_key")
    with pytest.raises(ConfigError, match="16-4096 visible ASCII characters"):
        SecurityConfig(auth_token_file=short).token()
