"""Human and JSON rendering of control events, states and errors, shared by `call` and `demo`.

One line per event, always starting with the engine and seq so interleaved engines stay readable
and a skipped seq is visible. On a TTY, progress with a known total is drawn as a bar that
rewrites its own line; elsewhere (logs, pipes) it is a plain line per event.
"""

from __future__ import annotations

import json
from typing import TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from control_service.errors import ControlError
from control_service.gen.control.v1 import control_pb2

BAR_WIDTH = 24
DIGEST_CHARS = 16  # hex characters of a digest shown to humans; JSON output keeps all of it


def short_digest(digest: str) -> str:
    """'sha256:0123…' trimmed to a readable prefix (empty stays '-')."""
    if not digest:
        return "-"
    algo, sep, hexpart = digest.partition(":")
    if not sep:
        return digest[:DIGEST_CHARS]
    return f"{algo}:{hexpart[:DIGEST_CHARS]}" + ("…" if len(hexpart) > DIGEST_CHARS else "")


def format_state(state: control_pb2.EngineState) -> str:
    """paused/version/in_flight/digest: what a trainer checks after each step."""
    return (
        f"paused={'yes' if state.paused else 'no'} "
        f"version={state.weight_version or '-'} "
        f"in_flight={state.in_flight} "
        f"digest={short_digest(state.weight_digest)}"
    )


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """'[#########...............] 3/8 37%' (total 0: just the count)."""
    if total <= 0:
        return f"{done}"
    fraction = min(done / total, 1.0)
    filled = round(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {int(fraction * 100)}%"


def format_result(result: control_pb2.Result) -> str:
    """The final state, plus the counters that are non-zero for this kind of call."""
    parts = [format_state(result.state)]
    if result.aborted:
        parts.append(f"aborted={result.aborted}")
    if result.drained:
        parts.append(f"drained={result.drained}")
    if result.bytes_loaded:
        parts.append(f"bytes_loaded={result.bytes_loaded}")
    if result.paused_ms:
        parts.append(f"paused_ms={result.paused_ms:.1f}")
    if result.message:
        parts.append(f"({result.message})")
    return " ".join(parts)


def format_progress(progress: control_pb2.Progress, bar: bool = False) -> str:
    """'load 3/8 shard-2' or, for a TTY, with a bar in place of the bare count."""
    amount = progress_bar(progress.done, progress.total) if bar else _count(progress)
    text = " ".join(p for p in (progress.stage, amount, progress.message) if p)
    return text


def _count(progress: control_pb2.Progress) -> str:
    return f"{progress.done}/{progress.total}" if progress.total else f"{progress.done}"


def format_event(event: control_pb2.ControlEvent, bar: bool = False) -> str:
    """One line: '<engine> #<seq> [<step>] <kind> <details>' (the step only in a Refit)."""
    kind = event.WhichOneof("event") or "unknown"
    step = f" [{event.step}]" if event.step else ""
    head = f"{event.engine or '-'} #{event.seq}{step} {kind}"
    if kind == "accepted":
        detail = event.accepted.message
    elif kind == "progress":
        detail = format_progress(event.progress, bar)
    elif kind == "result":
        detail = format_result(event.result)
    elif kind == "error":
        detail = f"{event.error.code}: {event.error.message}"
    else:
        detail = ""
    return f"{head} {detail}".rstrip()


def to_json(message: Message) -> str:
    """A message as one compact JSON line (proto3 JSON mapping, zero values included)."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def format_status(status: control_pb2.EngineStatus) -> str:
    """'<engine> reachable <state>' or '<engine> UNREACHABLE <why>'."""
    if not status.reachable:
        return f"{status.engine} unreachable {status.error or ''}".rstrip()
    line = f"{status.engine} reachable {format_state(status.state)}"
    return f"{line} ({status.error})" if status.error else line


def format_error(error: ControlError) -> list[str]:
    """'error: CODE: message', then one indented line per failed engine."""
    lines = [f"error: {error.code.name}: {error.message}"]
    lines += [f"  {f.engine}: {f.code.name}: {f.message}" for f in error.failures]
    return lines


class EventPrinter:
    """Prints a call's events as they arrive: usable directly as a client `on_event` callback.

    json_lines: one JSON object per event (for scripts); otherwise human lines, with progress
    bars redrawn in place when `tty` is true.
    """

    def __init__(self, out: TextIO, *, tty: bool = False, json_lines: bool = False) -> None:
        self.out = out
        self.tty = tty and not json_lines
        self.json_lines = json_lines
        self._bar_open = False

    def __call__(self, event: control_pb2.ControlEvent) -> None:
        if self.json_lines:
            self._write_line(to_json(event))
        elif self.tty and event.WhichOneof("event") == "progress" and event.progress.total:
            self._draw_bar(format_event(event, bar=True))
        else:
            self._write_line(format_event(event))

    def line(self, text: str) -> None:
        """Any other line (headers, summaries), ending a bar in progress first."""
        self._write_line(text)

    def close(self) -> None:
        """End a bar left open, so whatever prints next starts on its own line."""
        if self._bar_open:
            self.out.write("\n")
            self._bar_open = False
        self.out.flush()

    def _draw_bar(self, text: str) -> None:
        self.out.write(f"\r\x1b[2K{text}")
        self.out.flush()
        self._bar_open = True

    def _write_line(self, text: str) -> None:
        self.close()
        self.out.write(text + "\n")
        self.out.flush()
