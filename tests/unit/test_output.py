"""What the CLI prints: the stable plain lines, the terminal form (one live bar per engine), and
engine or caller text with control characters escaped (no terminal escape injection)."""

from __future__ import annotations

import io
import json

import grpc
from google.protobuf import json_format
from rich.console import Console

from control_service.cli import render
from control_service.cli.output import CallOutput, print_error
from control_service.client import Outcome, ServiceStatus
from control_service.errors import ControlError, EngineFailure
from control_service.gen.control.v1 import control_pb2 as pb

STATE = pb.EngineState(
    paused=True, weight_version="7", in_flight=2, weight_digest="sha256:" + "ab" * 32
)
# An OSC sequence that retitles the terminal, a CSI that clears it, a C1 CSI, and rich markup.
HOSTILE = "v\x1b]0;pwned\x07\x1b[2J\x9b31m[bold red]x[/]"
ESCAPED = "v\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m[bold red]x[/]"


def _event(engine: str = "e0", seq: int = 1, **kind: object) -> pb.ControlEvent:
    return pb.ControlEvent(request_id="r1", engine=engine, seq=seq, **kind)  # type: ignore[arg-type]


def terminal(height: int = 200, colors: bool = True) -> tuple[io.StringIO, Console]:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, height=height,
                      color_system="standard" if colors else None)  # fmt: skip
    return screen, console


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
    assert render.format_state(pb.EngineState()) == "paused=no version=- in_flight=0 digest=-"


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


def test_printable_escapes_every_control_character_and_keeps_the_rest() -> None:
    assert render.printable(HOSTILE) == ESCAPED
    assert render.printable("a\nb\tc\x7f\u202ed") == "a\\x0ab\\x09c\\x7f\\u202ed"
    assert render.printable("ünïcode ✓ 版本 […]") == "ünïcode ✓ 版本 […]"


def test_plain_lines_are_the_stable_text_and_json_lines_are_unchanged() -> None:
    events = [
        _event(accepted=pb.Accepted(message="go")),
        _event(seq=2, progress=pb.Progress(stage="load", done=1, total=2)),
        _event(seq=3, result=pb.Result(state=STATE)),
    ]
    plain, lines = io.StringIO(), io.StringIO()
    for out, json_lines in ((plain, False), (lines, True)):
        output = CallOutput(out, json_lines=json_lines)
        for event in events:
            output(event)
        output.outcome(Outcome("r1", {"e0": events[-1].result}))
    assert plain.getvalue().splitlines() == [
        *(render.format_event(e) for e in events),
        "ok: 1 engine(s)",
        "  e0 " + render.format_state(STATE),
    ]
    assert "\x1b" not in plain.getvalue() and "\r" not in plain.getvalue()
    parsed = [json_format.Parse(line, pb.ControlEvent()) for line in lines.getvalue().splitlines()]
    assert parsed == events, "JSON lines: one event each and nothing else"


def test_engine_text_is_escaped_in_plain_lines_on_stderr_and_kept_in_json() -> None:
    state = pb.EngineState(weight_version=HOSTILE)
    event = _event(engine="e0", result=pb.Result(state=state, message=HOSTILE))
    plain = io.StringIO()
    output = CallOutput(plain)
    output(event)
    output.outcome(Outcome("r1", {"e0": event.result}))
    assert "\x1b" not in plain.getvalue() and "\x9b" not in plain.getvalue()
    assert f"version={ESCAPED}" in plain.getvalue() and f"({ESCAPED})" in plain.getvalue()
    err = io.StringIO()
    failure = EngineFailure("e0", grpc.StatusCode.INTERNAL, HOSTILE)
    print_error(ControlError(grpc.StatusCode.INTERNAL, HOSTILE, (failure,)), err)
    assert err.getvalue() == f"error: INTERNAL: {ESCAPED}\n  e0: INTERNAL: {ESCAPED}\n"
    as_json = io.StringIO()
    CallOutput(as_json, json_lines=True)(event)
    assert json.loads(as_json.getvalue())["result"]["message"] == HOSTILE, "JSON keeps the data"


def test_on_a_terminal_engine_text_is_escaped_and_never_markup() -> None:
    screen, console = terminal()
    output = CallOutput(screen, console=console)
    output(_event(engine="e0", seq=1, progress=pb.Progress(stage=HOSTILE, done=1, total=2)))
    output(
        _event(engine="e0", seq=2, result=pb.Result(state=pb.EngineState(weight_version=HOSTILE)))
    )
    output.status(
        ServiceStatus({"e0": pb.EngineStatus(engine="e0", reachable=False, error=HOSTILE)})
    )
    output.close()
    text = screen.getvalue()
    assert "\x1b]0;pwned" not in text and "\x1b[2J" not in text and "\x9b" not in text
    assert text.count("[bold red]x[/]") >= 2, "markup in engine text is shown, not applied"
    assert "pwned\\x07" in text


async def test_one_live_bar_per_engine_the_furthest_behind_first() -> None:
    screen, console = terminal(height=40, colors=False)
    output = CallOutput(screen, console=console)
    engines = [f"engine-{i:02d}" for i in range(64)]
    for i, name in enumerate(engines):
        done = 1 if i >= 60 else 2  # the last four are behind the rest
        output(_event(engine=name, seq=1, progress=pb.Progress(stage="load", done=done, total=4)))
    for name in engines[:40]:
        output(_event(engine=name, seq=2, result=pb.Result(state=STATE)))
    mark = len(screen.getvalue())
    output.close()  # prints the lines still waiting, draws the board a last time, takes it down
    board = screen.getvalue()[mark:]
    bars = [
        line.split() for line in board.splitlines() if line.startswith("engine-") and "/4" in line
    ]
    assert [bar[0] for bar in bars] == [*engines[60:], *engines[40:52]], "behind first, 16 rows"
    assert all(bar[2:4] == (["1/4", "load"] if bar[0] >= "engine-60" else ["2/4", "load"])
               for bar in bars)  # fmt: skip
    assert "40/64" in [line for line in board.splitlines() if "engines done" in line][-1]
    results = [line for line in screen.getvalue().splitlines() if "#2 result" in line]
    assert len(results) == 40, "each result is a line above the board"


def test_progress_without_a_total_stays_a_line_on_a_terminal() -> None:
    screen, console = terminal()
    output = CallOutput(screen, console=console)
    output(_event(seq=1, progress=pb.Progress(stage="drain", done=3)))
    output.close()
    assert "e0 #1 progress drain 3" in screen.getvalue()


def test_tolerated_failures_are_printed_and_escaped() -> None:
    failure = pb.EngineFailure(step="pause", code="UNAVAILABLE", message=HOSTILE,
                               action=pb.FAILURE_ACTION_RESUME_FAILED)  # fmt: skip
    final = _event(
        "e5", 3, step="refit", result=pb.Result(message="state unknown", failure=failure)
    )
    assert render.format_event(final) == (
        f"e5 #3 [refit] result state=unknown failed pause: UNAVAILABLE: {HOSTILE} -> resume_failed"
        " (state unknown)"
    )
    out = io.StringIO()
    tolerated = EngineFailure("e5", grpc.StatusCode.UNAVAILABLE, HOSTILE, "pause", "resume_failed")
    results = {"e0": pb.Result(state=STATE), "e5": final.result}
    CallOutput(out).outcome(Outcome("r1", results, failures=(tolerated,)))
    assert out.getvalue().splitlines() == [
        "ok: 1 engine(s)",
        "  e0 paused=yes version=7 in_flight=2 digest=sha256:abababababababab…",
        "degraded: 1 engine(s) failed, tolerated (max_failed_engines); route around them:",
        f"  e5 failed pause: UNAVAILABLE: {ESCAPED} -> resume_failed",
    ]
    status = pb.EngineStatus(engine="e5", reachable=False, error="link down",
                             failure=pb.EngineFailure(request_id="r1", **{
                                 k: getattr(failure, k) for k in ("step", "code", "message")
                             }))  # fmt: skip
    assert render.format_status(status).startswith("e5 unreachable link down failed pause: ")
    screen, console = terminal()
    CallOutput(screen, console=console).status(ServiceStatus({"e5": status}))
    assert ESCAPED[:8] in screen.getvalue() and "\x1b]0;" not in screen.getvalue()


def test_a_leaving_engine_is_marked_in_status_lines() -> None:
    status = pb.EngineStatus(engine="e3", reachable=True, state=pb.EngineState(), leaving=True)
    assert render.format_status(status) == (
        "e3 reachable paused=no version=- in_flight=0 digest=- leaving"
    )
    assert not render.format_status(pb.EngineStatus(engine="e3")).endswith("leaving")
