"""The trainer-side client, the CLI, rendering and embedded engines, without the real server.

The client runs against a scripted in-process gRPC servicer (FakeControl) so that retries,
deadlines, error details and callbacks can be provoked exactly; embedded engines run against a
scripted engine program so that slow, dying and stubborn engines can be too. A few tests at the
end use the real engine_stub (and one the real server, through the demo).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from control_service.cli import app as cli
from control_service.cli import render
from control_service.cli.embedded import EmbeddedEngines
from control_service.client import ClientConfig, ControlClient, Outcome, TlsConfig
from control_service.errors import ControlError, EngineFailure, to_grpc_status
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from control_service.server.config import LinkConfig, SecurityConfig, ServiceConfig

REPO = Path(__file__).resolve().parents[2]
ENGINES = ("e0", "e1")


# ====================================================================================== CLI


def test_flag_wins_over_env_which_wins_over_default() -> None:
    env = {
        "CONTROL_SERVICE_MAX_OPEN_SLOTS": "9",
        "CONTROL_SERVICE_SHUTDOWN_GRACE": "3",
        "CONTROL_SERVICE_HEARTBEAT_TIMEOUT": "1.5",
        "CONTROL_SERVICE_DEFAULT_PAUSE_MODE": "keep",
    }
    args = cli.parse_args(
        ["serve", "--engine", "tcp://h:1", "--max-open-slots", "7", "--default-pause-mode", "wait"],
        environ=env,
    )
    config = cli.service_config(args)
    assert config.max_open_slots == 7  # flag over env
    assert config.default_pause_mode == "wait"  # flag over env
    assert config.shutdown_grace_s == 3.0  # env over default
    assert config.link.heartbeat_timeout_s == 1.5  # env reaches the LinkConfig too
    defaults = {f.name: f.default for f in dataclasses.fields(ServiceConfig)}
    assert config.default_timeout_s == defaults["default_timeout_s"]
    assert config.link.send_hwm == LinkConfig().send_hwm
    assert config.engines[0].name == "engine" and config.engines[0].endpoint == "tcp://h:1"


def test_repeatable_engine_flag_replaces_env_list() -> None:
    env = {"CONTROL_SERVICE_ENGINE": "a=tcp://h:1, b=ipc:///tmp/b.sock"}
    from_env = cli.service_config(cli.parse_args(["serve"], environ=env))
    assert [(e.name, e.endpoint) for e in from_env.engines] == [
        ("a", "tcp://h:1"),
        ("b", "ipc:///tmp/b.sock"),
    ]
    flagged = cli.parse_args(["serve", "--engine", "c=tcp://h:2"], environ=env)
    from_flag = cli.service_config(flagged)
    assert [e.name for e in from_flag.engines] == ["c"]


def test_bare_endpoints_get_distinct_names_and_embedded_engines_are_validated_up_front() -> None:
    args = cli.parse_args(
        ["serve", "--engine", "tcp://h:1", "--engine", "tcp://h:2", "--embedded-engines", "2"],
        environ={},
    )
    names = [e.name for e in cli.service_config(args).engines]
    assert names == ["engine-0", "engine-1", "embedded-0", "embedded-1"]
    clash = cli.parse_args(["serve", "--engine", "embedded-0=tcp://h:1", "--embedded-engine"], {})
    with pytest.raises(ControlError, match="unique"):
        cli.service_config(clash)


def test_every_service_and_link_field_has_a_serve_flag() -> None:
    covered = {(cls, name) for _flag, cls, name, _t, _h in cli.SERVICE_FLAGS}
    wanted = {(ServiceConfig, f.name) for f in dataclasses.fields(ServiceConfig)} - {
        (ServiceConfig, "engines"),
        (ServiceConfig, "link"),
        (ServiceConfig, "security"),
    }
    wanted |= {(LinkConfig, f.name) for f in dataclasses.fields(LinkConfig)}
    wanted |= {(SecurityConfig, f.name) for f in dataclasses.fields(SecurityConfig)}
    assert wanted - covered == set(), "add a serve flag for each new config field"


def test_help_shows_every_default_and_env_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in cli.serve_options():
        default = "none" if option.default in (None, []) else option.default
        assert f"(default: {default}; env {option.env_name})" in text, option.flag


def test_call_reads_connection_env_but_never_per_call_arguments() -> None:
    env = {
        "CONTROL_SERVICE_TARGET": "10.0.0.1:7",
        "CONTROL_SERVICE_TIMEOUT": "3",
        "CONTROL_SERVICE_REQUEST_ID": "stale",
        "CONTROL_SERVICE_ENGINE": "a=tcp://h:1",
    }
    args = cli.parse_args(["call", "pause", "--retries", "2"], environ=env)
    config = cli.client_config(args)
    assert (config.target, config.timeout_s, config.retries) == ("10.0.0.1:7", 3.0, 2)
    assert args.request_id is None and args.engine == []
    assert config.tls is None and config.keepalive_time_s == 30.0


def test_call_tls_and_keepalive_flags_build_the_client_config(tmp_path: Path) -> None:
    args = cli.parse_args(
        ["call", "status", "--tls-ca", str(tmp_path / "ca.pem"), "--keepalive", "0"], environ={}
    )
    config = cli.client_config(args)
    assert config.tls == TlsConfig(root_cert=tmp_path / "ca.pem")
    assert config.keepalive_time_s is None
    assert not any(name.startswith("grpc.keepalive") for name, _ in config.options())


@pytest.mark.parametrize(
    ("argv", "env", "reason"),
    [
        (["serve"], {}, "at least one engine is required"),
        (["serve", "--engine", "tcp://h:1", "--default-timeout", "1000"], {}, "default timeout"),
        (["serve", "--engine", "a=tcp://h:1", "--engine", "a=tcp://h:2"], {}, "unique"),
        (["serve", "--engine", "http://h:1"], {}, "must be tcp://"),
        (["serve", "--engine", "tcp://h:1", "--listen", "localhost"], {}, "not HOST:PORT"),
        (["serve", "--engine", "tcp://h:1", "--max-open-slots", "0"], {}, "integer >= 1"),
        (["serve", "--embedded-engine"], {"CONTROL_SERVICE_SEND_HWM": "x"}, "SEND_HWM"),
        (["serve", "--embedded-engine"], {"CONTROL_SERVICE_DEFAULT_PAUSE_MODE": "nap"}, "one of"),
        (["call", "pause", "--tls-cert", "/c.pem"], {}, "both a certificate chain and a key"),
        (["call", "pause", "--mode", "nap"], {}, "invalid choice"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    argv: list[str], env: dict[str, str], reason: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name in [n for n in os.environ if n.startswith(cli.ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        code = cli.main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err, err


def test_python_dash_m_reports_bad_configuration_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(cli.ENV_PREFIX)}
    done = subprocess.run(
        [sys.executable, "-m", "control_service", "serve", "--engine", "tcp://h:1",
         "--max-timeout", "5"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "control-service serve: error: need 0 < default timeout <= max timeout\n"


def test_exit_codes_are_stable_and_documented() -> None:
    assert cli.exit_code(grpc.StatusCode.UNAVAILABLE) == 114
    assert cli.exit_code(grpc.StatusCode.NOT_FOUND) == 105
    assert "114 UNAVAILABLE" in cli.EXIT_CODES_HELP and "100+CODE" in cli.EXIT_CODES_HELP


# ================================================================================ rendering


def _event(engine: str = "e0", seq: int = 1, **kind: Any) -> pb.ControlEvent:
    return pb.ControlEvent(request_id="r1", engine=engine, seq=seq, **kind)


STATE = pb.EngineState(
    paused=True, weight_version="7", in_flight=2, weight_digest="sha256:" + "ab" * 32
)


def test_format_event_one_line_per_kind() -> None:
    assert render.format_event(_event(accepted=pb.Accepted(message="loading 2 files"))) == (
        "e0 #1 accepted loading 2 files"
    )
    progress = _event(seq=2, progress=pb.Progress(stage="load", done=3, total=8, message="f1"))
    assert render.format_event(progress) == "e0 #2 progress load 3/8 f1"
    result = _event(seq=3, result=pb.Result(state=STATE, bytes_loaded=10, message="loaded"))
    assert render.format_event(result) == (
        "e0 #3 result paused=yes version=7 in_flight=2 digest=sha256:abababababababab… "
        "bytes_loaded=10 (loaded)"
    )
    error = _event(seq=4, error=pb.EngineError(code="NOT_FOUND", message="no files"))
    assert render.format_event(error) == "e0 #4 error NOT_FOUND: no files"
    empty = render.format_state(pb.EngineState())
    assert empty == "paused=no version=- in_flight=0 digest=-"


def test_progress_bar_clamps_and_handles_unknown_total() -> None:
    assert render.progress_bar(0, 4, width=4) == "[....] 0/4 0%"
    assert render.progress_bar(2, 4, width=4) == "[##..] 2/4 50%"
    assert render.progress_bar(9, 4, width=4) == "[####] 9/4 100%"
    assert render.progress_bar(5, 0) == "5"


def test_printer_draws_bars_in_place_on_a_tty_and_plain_lines_elsewhere() -> None:
    events = [
        _event(accepted=pb.Accepted(message="go")),
        _event(seq=2, progress=pb.Progress(stage="load", done=1, total=2)),
        _event(seq=3, progress=pb.Progress(stage="load", done=2, total=2)),
        _event(seq=4, result=pb.Result(state=STATE)),
    ]
    tty, plain = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (plain, False)):
        printer = render.EventPrinter(out, tty=is_tty)
        for event in events:
            printer(event)
        printer.close()
    assert plain.getvalue().splitlines() == [render.format_event(e) for e in events]
    assert "\r" not in plain.getvalue()
    lines = tty.getvalue().split("\n")
    assert lines[0] == "e0 #1 accepted go"
    assert lines[1].count("\r") == 2 and lines[1].endswith("[" + "#" * 24 + "] 2/2 100%")
    assert lines[2].startswith("e0 #4 result")


def test_json_lines_round_trip() -> None:
    event = _event(seq=5, result=pb.Result(state=STATE, aborted=3))
    out = io.StringIO()
    render.EventPrinter(out, tty=True, json_lines=True)(event)
    line = out.getvalue()
    assert line.count("\n") == 1 and "\r" not in line
    assert json_format.Parse(line, pb.ControlEvent()) == event
    assert json.loads(line)["result"]["state"]["paused"] is True


def test_format_error_names_each_engine() -> None:
    error = ControlError(
        grpc.StatusCode.NOT_FOUND,
        "1 of 2 engines failed",
        (EngineFailure("e1", grpc.StatusCode.NOT_FOUND, "no files"),),
    )
    assert render.format_error(error) == [
        "error: NOT_FOUND: 1 of 2 engines failed",
        "  e1: NOT_FOUND: no files",
    ]


# ============================================================= client against a scripted server


@dataclass
class Seen:
    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class FakeControl(control_pb2_grpc.ControlServiceServicer):
    """Scripted servicer: drop the first N attempts, fail with an error, or hang."""

    unavailable_first: int = 0
    fail_with: ControlError | None = None
    hang: bool = False
    seen: list[Seen] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    target: str = ""

    async def Pause(self, request: Any, context: Any) -> AsyncIterator[pb.ControlEvent]:
        async for event in self._run("Pause", request, context):
            yield event

    async def UpdateWeights(self, request: Any, context: Any) -> AsyncIterator[pb.ControlEvent]:
        async for event in self._run("UpdateWeights", request, context):
            yield event

    async def Resume(self, request: Any, context: Any) -> AsyncIterator[pb.ControlEvent]:
        async for event in self._run("Resume", request, context):
            yield event

    async def GetStatus(self, request: Any, context: Any) -> pb.GetStatusResponse:
        self._record("GetStatus", request, context)
        if len(self.seen) <= self.unavailable_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return pb.GetStatusResponse(
            engines=[
                pb.EngineStatus(engine="e0", reachable=True, state=STATE),
                pb.EngineStatus(engine="e1", reachable=False, error="down"),
            ]
        )

    def _record(self, method: str, request: Any, context: Any) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen.append(Seen(method, request, metadata, context.time_remaining()))

    async def _run(self, method: str, request: Any, context: Any) -> AsyncIterator[pb.ControlEvent]:
        self._record(method, request, context)
        rid = request.request_id
        accepted = pb.Accepted(message="go")
        yield pb.ControlEvent(request_id=rid, engine="e0", seq=1, accepted=accepted)
        if len(self.seen) <= self.unavailable_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
        if self.hang:
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled.set()
        if self.fail_with is not None:
            status = to_grpc_status(self.fail_with)
            await context.abort(status.code, status.details, status.trailing_metadata)
        version = getattr(request, "version", "")
        for engine in request.engines or ENGINES:
            state = pb.EngineState(paused=method != "Resume", weight_version=version)
            yield pb.ControlEvent(
                request_id=rid, engine=engine, seq=2, result=pb.Result(state=state)
            )


@pytest.fixture
async def fake() -> AsyncIterator[FakeControl]:
    servicer = FakeControl()
    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.target = f"127.0.0.1:{port}"
    yield servicer
    await server.stop(None)


def _config(fake: FakeControl, **overrides: Any) -> ClientConfig:
    fast = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.01}
    return ClientConfig(target=fake.target, **{**fast, **overrides})


async def test_pause_sends_typed_request_and_returns_each_engines_result(fake: FakeControl) -> None:
    got: list[pb.ControlEvent] = []
    async with ControlClient(_config(fake, bearer_token="s3cret")) as client:
        outcome = await client.pause("wait", clear_cache=True, on_event=got.append)
    request = fake.seen[0].request
    assert request.mode == pb.PAUSE_MODE_WAIT and request.clear_cache
    assert len(request.request_id) == 32 and outcome.request_id == request.request_id
    assert not request.HasField("timeout")  # no timeout configured: the server's default
    assert fake.seen[0].metadata["authorization"] == "Bearer s3cret"
    assert set(outcome.results) == set(ENGINES) and all(s.paused for s in outcome.states().values())
    assert list(outcome.events) == got and len(got) == 3 and outcome.attempts == 1


async def test_timeout_goes_on_the_wire_and_the_deadline_has_a_margin(fake: FakeControl) -> None:
    async with ControlClient(_config(fake, timeout_s=30.0, deadline_margin_s=5.0)) as client:
        await client.update_weights("/ckpt", "3", engines=["e1"], timeout=2.5)
    seen = fake.seen[0]
    assert seen.request.timeout.ToNanoseconds() == 2_500_000_000
    assert seen.request.engines == ["e1"] and seen.request.version == "3"
    assert seen.time_remaining is not None and 7.0 < seen.time_remaining < 8.0  # 2.5 + 5
    assert ClientConfig(deadline_margin_s=5.0).transport_deadline(None) is None


async def test_unavailable_is_retried_with_the_same_request_id(fake: FakeControl) -> None:
    fake.unavailable_first = 2
    calls: list[pb.ControlEvent] = []

    async def on_event(event: pb.ControlEvent) -> None:  # async callbacks are awaited
        calls.append(event)

    async with ControlClient(_config(fake, retries=2)) as client:
        outcome = await client.resume(request_id="step-7.resume", on_event=on_event)
    assert [s.request.request_id for s in fake.seen] == ["step-7.resume"] * 3
    assert outcome.attempts == 3
    # the Accepted event each attempt repeated is delivered once
    assert [e.WhichOneof("event") for e in calls] == ["accepted", "result", "result"]
    assert not any(s.paused for s in outcome.states().values())


async def test_retries_exhausted_raise_unavailable(fake: FakeControl) -> None:
    fake.unavailable_first = 5
    async with ControlClient(_config(fake, retries=1)) as client:
        with pytest.raises(ControlError) as info:
            await client.pause()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    assert len(fake.seen) == 2


async def test_engine_failures_come_back_from_error_info_and_are_not_retried(
    fake: FakeControl,
) -> None:
    fake.fail_with = ControlError(
        grpc.StatusCode.NOT_FOUND,
        "1 of 2 engines failed",
        (EngineFailure("e1", grpc.StatusCode.NOT_FOUND, "no *.safetensors"),),
    )
    async with ControlClient(_config(fake, retries=3)) as client:
        with pytest.raises(ControlError) as info:
            await client.update_weights("/missing", "1")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.message == "1 of 2 engines failed"
    assert info.value.failures == fake.fail_with.failures
    assert len(fake.seen) == 1


async def test_a_failing_callback_cancels_the_call(fake: FakeControl) -> None:
    fake.hang = True

    def explode(event: pb.ControlEvent) -> None:
        raise RuntimeError("progress bar broke")

    async with ControlClient(_config(fake)) as client:
        with pytest.raises(RuntimeError, match="progress bar broke"):
            await client.pause(on_event=explode)
        await asyncio.wait_for(fake.cancelled.wait(), 10)


async def test_status_is_a_mapping_and_is_retried(fake: FakeControl) -> None:
    fake.unavailable_first = 1
    async with ControlClient(_config(fake, retries=1)) as client:
        status = await client.status(["e0", "e1"])
    assert fake.seen[-1].request.engines == ["e0", "e1"]
    assert status.engines["e0"].state.weight_version == "7"
    assert not status.engines["e1"].reachable and not status.all_reachable


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda c: c.pause("nap"), "pause mode"),  # type: ignore[arg-type]
        (lambda c: c.pause(request_id="has space"), "request id"),
        (lambda c: c.resume(timeout=0), "timeout"),
        (lambda c: c.update_weights("", "1"), "uri"),
    ],
)
async def test_bad_arguments_fail_locally(fake: FakeControl, call: Any, reason: str) -> None:
    async with ControlClient(_config(fake)) as client:
        with pytest.raises(ControlError, match=reason) as info:
            await call(client)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and fake.seen == []


def test_client_config_validates_and_backoff_is_capped() -> None:
    with pytest.raises(ControlError):
        ClientConfig(retries=-1)
    with pytest.raises(ControlError):
        ClientConfig(timeout_s=0)
    with pytest.raises(ControlError):
        TlsConfig(cert_chain=Path("c.pem"))
    options = dict(ClientConfig(channel_options=(("grpc.keepalive_time_ms", 1),)).options())
    assert options["grpc.keepalive_time_ms"] == 1  # the caller's options win
    backoff = ClientConfig(retry_backoff_s=0.2, retry_backoff_max_s=1.0)
    assert [backoff.retry_delay_s(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]


async def test_client_used_without_entering_says_so() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await ControlClient().resume()


# ======================================================================= `call` against the fake


async def test_call_prints_header_events_and_final_state(fake: FakeControl) -> None:
    args = cli.parse_args(
        ["call", "update-weights", "/ckpt", "9", "--target", fake.target, "--engine", "e1",
         "--request-id", "rid-1"],
        environ={},
    )  # fmt: skip
    out = io.StringIO()
    assert await cli.call(args, cli.client_config(args), out) == 0
    assert out.getvalue().splitlines() == [
        "update-weights request_id=rid-1",
        "e0 #1 accepted go",
        "e1 #2 result paused=yes version=9 in_flight=0 digest=-",
        "ok: 1 engine(s)",
        "  e1 paused=yes version=9 in_flight=0 digest=-",
    ]
    assert fake.seen[0].request.uri == "/ckpt" and fake.seen[0].request.engines == ["e1"]


async def test_call_failure_prints_error_and_exits_with_the_codes_number(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.fail_with = ControlError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "1 of 2 engines failed",
        (EngineFailure("e0", grpc.StatusCode.FAILED_PRECONDITION, "not paused"),),
    )
    args = cli.parse_args(["call", "update-weights", "/c", "1", "--target", fake.target], {})
    assert await cli.call(args, cli.client_config(args), io.StringIO()) == 109
    assert capsys.readouterr().err.splitlines() == [
        "error: FAILED_PRECONDITION: 1 of 2 engines failed",
        "  e0: FAILED_PRECONDITION: not paused",
    ]


async def test_call_json_prints_only_parseable_events(fake: FakeControl) -> None:
    args = cli.parse_args(["call", "pause", "--mode", "keep", "--json", "--target", fake.target],
                          {})  # fmt: skip
    out = io.StringIO()
    assert await cli.call(args, cli.client_config(args), out) == 0
    events = [json_format.Parse(line, pb.ControlEvent()) for line in out.getvalue().splitlines()]
    assert [e.engine for e in events] == ["e0", "e0", "e1"]
    assert fake.seen[0].request.mode == pb.PAUSE_MODE_KEEP

    status_args = cli.parse_args(["call", "status", "--json", "--target", fake.target], {})
    out = io.StringIO()
    assert await cli.call(status_args, cli.client_config(status_args), out) == 0
    response = json_format.Parse(out.getvalue(), pb.GetStatusResponse())
    assert [e.engine for e in response.engines] == ["e0", "e1"]


# ============================================================== embedded engines (scripted)

FAKE_ENGINE = textwrap.dedent(
    """
    import json, os, signal, sys
    args = sys.argv[1:]
    bind, name = args[args.index("--bind") + 1], args[args.index("--name") + 1]
    mode = args[args.index("--mode") + 1] if "--mode" in args else "ok"
    if mode == "exit" or f"fail={name}" in args:
        print("boom: cannot bind", file=sys.stderr, flush=True)
        sys.exit(3)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("starting up (not json)", flush=True)
    if mode != "silent":
        endpoint = bind.replace(":0", ":5555")
        print(json.dumps({"event": "ready", "endpoint": endpoint, "pid": os.getpid()}), flush=True)
        print(json.dumps({"event": "argv", "argv": args}), flush=True)
        for i in range(3000):  # ~200 KB: more than a pipe holds, so someone must drain it
            print(json.dumps({"event": "request", "i": i, "pad": "x" * 48}))
        print(json.dumps({"event": "done"}), flush=True)
    signal.sigwait({signal.SIGUSR1} if mode == "stubborn" else {signal.SIGTERM})
    sys.exit(0)
    """
)


@pytest.fixture
def fake_engine(tmp_path: Path) -> tuple[str, ...]:
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return (sys.executable, str(script))


async def test_embedded_engines_report_actual_endpoints_drain_and_stop(
    fake_engine: tuple[str, ...],
) -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    done = asyncio.Event()

    def on_line(name: str, event: dict[str, Any]) -> None:
        lines.append((name, event))
        if event.get("event") == "done" and sum(e.get("event") == "done" for _, e in lines) == 2:
            done.set()

    engines = EmbeddedEngines(
        2, transport="tcp", extra_args=["--mode", "ok"], on_line=on_line, command=fake_engine
    )
    async with engines as configs:
        assert [(c.name, c.endpoint) for c in configs] == [
            ("engine-0", "tcp://127.0.0.1:5555"),
            ("engine-1", "tcp://127.0.0.1:5555"),
        ]
        await asyncio.wait_for(done.wait(), 30)
    argv = next(e["argv"] for _, e in lines if e.get("event") == "argv")
    assert argv[-2:] == ["--mode", "ok"]
    assert engines.returncodes == (0, 0)  # exited by their SIGTERM handling, not killed


async def test_embedded_ipc_endpoints_live_in_a_private_dir_removed_on_exit(
    fake_engine: tuple[str, ...],
) -> None:
    async with EmbeddedEngines(1, command=fake_engine) as configs:
        path = Path(configs[0].endpoint.removeprefix("ipc://"))
        assert configs[0].endpoint.startswith("ipc://") and path.name == "engine-0.sock"
        assert path.parent.is_dir() and path.parent.name.startswith("control-service-")
    assert not path.parent.exists()


async def test_embedded_engine_that_dies_explains_why_and_takes_the_others_down(
    fake_engine: tuple[str, ...],
) -> None:
    engines = EmbeddedEngines(2, extra_args=["fail=engine-1"], command=fake_engine)
    with pytest.raises(ControlError) as info:
        await engines.start()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "engine-1 exited with code 3" in info.value.message
    assert "boom: cannot bind" in info.value.message
    assert all(code is not None for code in engines.returncodes)


async def test_embedded_engine_never_ready_times_out(fake_engine: tuple[str, ...]) -> None:
    engines = EmbeddedEngines(
        1, extra_args=["--mode", "silent"], ready_timeout_s=0.5, command=fake_engine
    )
    with pytest.raises(ControlError, match=r"not ready within 0\.5s"):
        await engines.start()
    assert engines.returncodes == (0,)  # stopped with SIGTERM after the timeout


async def test_embedded_engine_ignoring_sigterm_is_killed(fake_engine: tuple[str, ...]) -> None:
    engines = EmbeddedEngines(
        1, extra_args=["--mode", "stubborn"], stop_timeout_s=0.5, command=fake_engine
    )
    async with engines:
        pass
    assert engines.returncodes == (-9,)


# ================================================================ with the real engine_stub


async def test_real_engine_stub_serves_over_ipc_and_exits_cleanly_on_sigterm() -> None:
    pytest.importorskip("engine_stub")
    from control_service.server import ControlServer

    engines = EmbeddedEngines(1, forward_stderr=False)
    async with engines as configs:
        assert configs[0].endpoint.startswith("ipc://")
        assert configs[0].endpoint.endswith("/engine-0.sock")
        # Up means heartbeats flow, so the stub is past its start-up (signal handlers included).
        server = ControlServer(ServiceConfig(engines=configs, listen="127.0.0.1:0"))
        await server.start()
        try:
            assert await server.wait_engines_up(10.0)
        finally:
            await server.stop(grace=0.5)
    assert engines.returncodes == (0,)


def test_demo_runs_two_cycles_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "control_service", "demo", "--log-level", "error"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "engine-0 #4 result paused=yes version=1" in out
    # Cycle 2 is one Refit: its steps' events, then the final state the refit proved.
    assert "engine-0 #5 [update_weights] result paused=yes version=2" in out
    assert "[refit] result paused=no version=2" in out
    assert "engine-0 reachable paused=no version=2" in out
    assert out.rstrip().endswith("demo ok")


def test_outcome_states_is_per_engine() -> None:
    outcome = Outcome("r", {"e0": pb.Result(state=STATE)})
    assert outcome.states() == {"e0": STATE}
