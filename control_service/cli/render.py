"""Plain and JSON text for control events, states and errors, shared by `call` and `demo`.

One line per event, always starting with the engine and seq so interleaved engines stay readable
and a skipped seq is visible. This is the stable text printed when not on a terminal (logs,
pipes); cli/output.py draws the same lines on a terminal, with live bars for progress.

Engines and callers choose much of this text (versions, messages, stages, names): `printable`
escapes its control characters, so no engine can move a terminal's cursor or retitle it.
"""

from __future__ import annotations

import json
import re

from google.protobuf import json_format
from google.protobuf.message import Message

from control_service.errors import ControlError, EngineFailure
from control_service.gen.control.v1 import control_pb2

DIGEST_CHARS = 16  # hex characters of a digest shown to humans; JSON output keeps all of it

# C0 and C1 controls, DEL, line/paragraph separators and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character written as an escape (ESC as \\x1b): safe to print."""
    return _CONTROL.sub(_escape, text)


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


def format_result(result: control_pb2.Result) -> str:
    """The final state, plus the counters that are non-zero for this kind of call, and a
    Refit's failure of this engine (where, why, what was done)."""
    parts = [format_state(result.state) if result.HasField("state") else "state=unknown"]
    if result.HasField("failure"):
        parts.append(format_failure(result.failure))
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


def format_progress(progress: control_pb2.Progress) -> str:
    """'load 3/8 shard-2'."""
    return " ".join(p for p in (progress.stage, _count(progress), progress.message) if p)


def _count(progress: control_pb2.Progress) -> str:
    return f"{progress.done}/{progress.total}" if progress.total else f"{progress.done}"


def format_event(event: control_pb2.ControlEvent) -> str:
    """One line: '<engine> #<seq> [<step>] <kind> <details>' (the step only in a Refit)."""
    kind = event.WhichOneof("event") or "unknown"
    step = f" [{event.step}]" if event.step else ""
    head = f"{event.engine or '-'} #{event.seq}{step} {kind}"
    if kind == "accepted":
        detail = event.accepted.message
    elif kind == "progress":
        detail = format_progress(event.progress)
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


def format_failure(failure: control_pb2.EngineFailure) -> str:
    """'failed <step>: CODE: message -> action [request_id]' (what a trainer routes around)."""
    action = control_pb2.FailureAction.Name(failure.action).removeprefix("FAILURE_ACTION_")
    call = f" [{failure.request_id}]" if failure.request_id else ""
    return f"failed {failure.step}: {failure.code}: {failure.message} -> {action.lower()}{call}"


def format_status(status: control_pb2.EngineStatus) -> str:
    """'<engine> reachable <state>' or '<engine> UNREACHABLE <why>', 'leaving' when it was
    removed from the fleet and only finishes its calls, then its failure flag."""
    if not status.reachable:
        line = f"{status.engine} unreachable {status.error or ''}".rstrip()
    else:
        line = f"{status.engine} reachable {format_state(status.state)}"
        line = f"{line} ({status.error})" if status.error else line
    line = f"{line} leaving" if status.leaving else line
    return f"{line} {format_failure(status.failure)}" if status.HasField("failure") else line


def format_error(error: ControlError) -> list[str]:
    """'error: CODE: message', then one indented line per failed engine."""
    lines = [f"error: {error.code.name}: {error.message}"]
    lines += [f"  {f.engine}: {f.code.name}: {f.message}" for f in error.failures]
    return lines


def format_tolerated(failures: tuple[EngineFailure, ...]) -> list[str]:
    """The engines a successful call did without: one indented line each."""
    return [f"  {f.engine} failed {f.step}: {f.code.name}: {f.message} -> {f.action}"
            for f in failures]  # fmt: skip
