"""The trainer's side against a real service: `control-service call` exit codes and status names,
connection flags before or after the action, engine text escaped on a terminal, the demo, and
the client's TLS, mutual TLS and bearer token working end to end (certificates made here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

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
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_SERVICE_")}
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


async def test_connection_flags_work_before_and_after_the_action(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    """Issue 12: `call --target H:P refit /ckpt 5` said `invalid choice`; both orders work."""
    from engine_stub import write_checkpoint

    write_checkpoint(tmp_path / "ckpt")
    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    ckpt, target = str(tmp_path / "ckpt"), service.target

    code, out, err = await run_cli("call", "--target", target, "refit", ckpt, "5")
    assert code == 0, err
    assert "e0 paused=no version=5" in out
    code, out, err = await run_cli("call", "refit", ckpt, "6", "--target", target)
    assert code == 0, err
    assert "e0 paused=no version=6" in out
    for argv in (("--target", target, "status"), ("status", "--target", target)):
        code, out, err = await run_cli("call", *argv)
        assert (code, out.split()[:3]) == (0, ["e0", "reachable", "paused=no"]), err
    code, _, err = await run_cli("call", "status", env={"CONTROL_SERVICE_TARGET": target})
    assert code == 0, err


async def test_call_shows_failures_it_tolerated_and_status_flags_them(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    from engine_stub import write_checkpoint

    write_checkpoint(tmp_path / "ckpt")
    stubs = [start_stub() for _ in range(3)]
    service = await start_service([stub.endpoint for stub in stubs])
    stubs[1].knob(fail_next={"code": "NOT_FOUND", "message": "shard missing",
                             "method": "update_weights"})  # fmt: skip
    target = ("--target", service.target)
    code, out, err = await run_cli(
        "call", "refit", str(tmp_path / "ckpt"), "3", "--max-failed-engines", "1", *target
    )
    assert code == 0, err
    assert "ok: 2 engine(s)" in out and "degraded: 1 engine(s) failed" in out, out
    assert "  e1 failed update_weights: NOT_FOUND: shard missing -> resumed_old_weights" in out
    assert "e1 #" in out and "[refit] result paused=no" in out, "the final Result line"
    code, out, err = await run_cli("call", "status", *target)
    assert code == 0, err
    (e1,) = [line for line in out.splitlines() if line.startswith("e1 ")]
    assert "failed update_weights: NOT_FOUND: shard missing -> resumed_old_weights [" in e1
    code, out, err = await run_cli("call", "resume", "--max-failed-engines", "3", *target)
    assert code == 103 and "max_failed_engines 3 cannot be met" in err, err


async def run_on_terminal(*argv: str) -> tuple[int, str]:
    """`python -m control_service ARGV` with its stdout on a pseudo-terminal: exit code, screen."""
    master, slave = os.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_SERVICE_")}
    env = {**clean, "COLUMNS": "200", "TERM": "xterm"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", *argv, env=env,
        stdout=slave, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)
    screen = bytearray()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", buffering=0)
    )
    try:
        with contextlib.suppress(OSError):  # EIO: the child closed the terminal
            while chunk := await asyncio.wait_for(reader.read(65536), 60):
                screen += chunk
    finally:
        transport.close()
    await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode is not None
    return proc.returncode, screen.decode(errors="replace")


async def test_engine_and_caller_text_is_escaped_on_a_terminal(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    """Issue 16: control characters in versions and messages reached the terminal raw."""
    from engine_stub import write_checkpoint

    write_checkpoint(tmp_path / "ckpt")
    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    version = "v1\x1b]0;pwned\x07\x1b[2J[bold]"  # retitles, then clears, the terminal
    target = ("--target", service.target)
    code, screen = await run_on_terminal("call", "pause", *target)
    assert code == 0, screen
    code, screen = await run_on_terminal("call", "update-weights", str(tmp_path / "ckpt"),
                                         version, *target)  # fmt: skip
    assert code == 0, screen
    assert "\x1b]0;pwned" not in screen and "\x1b[2J" not in screen
    assert "version=v1\\x1b]0;pwned\\x07\\x1b[2J[bold]" in screen
    code, screen = await run_on_terminal("call", "status", *target)
    assert code == 0 and "pwned\\x07" in screen and "\x1b]0;pwned" not in screen, screen


async def test_stage_weights_and_a_staged_refit_from_the_shell(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    """Issue 15: staging from the CLI, in each output style, with the usual exit codes."""
    from control_service.gen.control.v1 import control_pb2 as pb
    from engine_stub import write_checkpoint

    for version in ("1", "2", "3"):
        write_checkpoint(tmp_path / version, files=2, seed=int(version))
    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    target = ("--target", service.target)

    code, out, err = await run_cli("call", "stage-weights", str(tmp_path / "1"), "1", *target)
    assert code == 0, err
    assert out.startswith("stage-weights request_id=") and "e0 paused=no version=-" in out
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert status.engines[0].state.staged_version == "1"

    code, out, err = await run_cli("call", "refit", str(tmp_path / "2"), "2", "--stage", *target)
    assert code == 0, err
    assert "e0 #1 [stage_weights] accepted" in out and "e0 paused=no version=2" in out
    assert out.index("[stage_weights]") < out.index("[pause]") < out.index("[refit]")

    code, out, err = await run_cli("call", "--json", "stage-weights", str(tmp_path / "3"), "3",
                                   "--request-id", "cli-stage-3", *target)  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert {line["requestId"] for line in lines} == {"cli-stage-3"}
    assert lines[-1]["result"]["state"]["stagedVersion"] == "3"

    code, screen = await run_on_terminal("call", "refit", str(tmp_path / "3"), "3", "--stage",
                                         *target)  # fmt: skip
    assert code == 0 and "ok: 1 engine(s)" in screen and "e0 paused=no version=3" in screen

    code, out, err = await run_cli("call", "stage-weights", str(tmp_path / "none"), "4", *target)
    assert code == 105 and err.startswith("error: NOT_FOUND: "), err
    code, out, err = await run_cli("call", "refit", str(tmp_path / "none"), "4", "--stage",
                                   *target)  # fmt: skip
    assert code == 105 and "nothing was paused" in err, err
    assert "[pause]" not in out


def test_demo_runs_two_cycles_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "control_service", "demo", "--log-level", "error"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "engine-0 #4 result paused=yes version=1" in out
    # Cycle 2 is one Refit: its steps' events, then the final state the refit proved.
    assert "engine-0 #5 [update_weights] result paused=yes version=2" in out
    assert "[refit] result paused=no version=2" in out
    assert "engine-0 reachable paused=no version=2" in out
    assert out.rstrip().endswith("demo ok")


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


async def test_ctrl_c_during_a_call_exits_130() -> None:
    """A service that accepts TCP but never speaks HTTP/2: the call hangs until interrupted."""
    import signal
    import socket

    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        target = f"127.0.0.1:{mute.getsockname()[1]}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_SERVICE_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control_service", "call", "--target", target,
            "--timeout", "100", "pause", env=clean,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        header = await asyncio.wait_for(proc.stdout.readline(), 60)  # the call has started
        assert header.startswith(b"pause request_id="), header
        proc.send_signal(signal.SIGINT)
        err = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 130
    assert err == b"interrupted\n"
