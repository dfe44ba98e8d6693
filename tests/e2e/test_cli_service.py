"""The trainer's side against a real service: `control-service call` exit codes and status names,
and the client's TLS, mutual TLS and bearer token working end to end (certificates made here)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from control_service.cli import app as cli
from control_service.client import ClientConfig, ControlClient, TlsConfig
from control_service.errors import ControlError
from control_service.server.config import SecurityConfig
from tests.certs import make_ca, make_leaf
from tests.harness import StartService
from tests.stub_process import StubProcess

TOKEN = "a-token-for-the-cli-tests-0123456789"


async def run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m control_service ARGV` as its own process (the service runs in this loop, so
    the child must not be waited for synchronously): exit code, stdout, stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(cli.ENV_PREFIX)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", *argv, env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_call_exits_with_the_status_code_and_names_it(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    target = ("--target", service.target)

    code, out, err = await run_cli("call", "update-weights", "/ckpt", "1", *target)
    assert code == 100 + grpc.StatusCode.FAILED_PRECONDITION.value[0] == 109, err
    assert err.startswith("error: FAILED_PRECONDITION: "), err
    assert "e0: FAILED_PRECONDITION" in err, "the failed engine is named"

    code, out, err = await run_cli("call", "pause", *target)
    assert code == 0, err
    assert "ok: 1 engine(s)" in out and "e0 paused=yes" in out

    code, out, err = await run_cli("call", "update-weights", "/no/such/ckpt", "1", *target)
    assert code == 105 and err.startswith("error: NOT_FOUND: "), err


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_pair, ca, ca_key = make_ca(tmp_path, "ca")
    server = make_leaf(tmp_path, "server", ca, ca_key, server=True)
    client = make_leaf(tmp_path, "client", ca, ca_key, server=False)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return {
        "ca": ca_pair.cert, "server_cert": server.cert, "server_key": server.key,
        "client_cert": client.cert, "client_key": client.key, "token": token,
    }  # fmt: skip


async def test_client_and_cli_over_mutual_tls_with_a_token(
    start_service: StartService, start_stub: Callable[..., StubProcess], pki: dict[str, Path]
) -> None:
    stub = start_stub()
    security = SecurityConfig(
        tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_client_ca=pki["ca"],
        auth_token_file=pki["token"],
    )  # fmt: skip
    service = await start_service({"e0": stub.endpoint}, security=security)
    tls = TlsConfig(root_cert=pki["ca"], cert_chain=pki["client_cert"],
                    private_key=pki["client_key"])  # fmt: skip

    config = ClientConfig(target=service.target, tls=tls, bearer_token=TOKEN, retries=2)
    async with ControlClient(config) as client:
        outcome = await client.pause("wait")
        assert outcome.states()["e0"].paused and outcome.attempts == 1
        assert (await client.status()).engines["e0"].reachable

    wrong = ClientConfig(target=service.target, tls=tls, bearer_token="x" * 32, retries=2)
    async with ControlClient(wrong) as client:
        with pytest.raises(ControlError) as info:
            await client.resume()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

    flags = (
        "--target", service.target, "--tls-ca", str(pki["ca"]),
        "--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"]),
    )  # fmt: skip
    code, out, err = await run_cli("call", "resume", *flags, env={"CONTROL_SERVICE_TOKEN": TOKEN})
    assert code == 0, err
    assert "e0 paused=no" in out
    code, _, err = await run_cli("call", "status", *flags)
    assert code == 100 + grpc.StatusCode.UNAUTHENTICATED.value[0] == 116, err
    assert err.startswith("error: UNAUTHENTICATED: "), err
