"""What a call prints, in one of three forms chosen once per run.

- JSON lines (`--json`): one proto3-JSON object per event, or the whole status; for scripts.
- Plain lines when stdout is not a terminal: render.py's stable text, one line per event.
- On a terminal, through rich: the same lines scroll above one live bar per engine (a refit of
  64 engines shows which ones are behind, under a bar of finished engines); `status` is a table.

Every human line passes through render.printable, and goes to rich as Text (never markup), so
neither control characters nor brackets in engine text reach the terminal as commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TextIO

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from control_service.cli.render import (
    format_error,
    format_event,
    format_failure,
    format_state,
    format_status,
    format_tolerated,
    printable,
    short_digest,
    to_json,
)
from control_service.client import Outcome, ServiceStatus
from control_service.errors import ControlError
from control_service.gen.control.v1 import control_pb2

BAR_WIDTH = 24
MAX_ROWS = 16  # engine bars shown at once: the ones furthest behind
REFRESH_PER_SECOND = 4
FLUSH_S = 0.1  # how long a line may wait to be printed with others above the bars


class CallOutput:
    """Prints a call's events as they arrive; usable directly as a client `on_event` callback."""

    def __init__(
        self, out: TextIO, *, json_lines: bool = False, console: Console | None = None
    ) -> None:
        self.out = out
        self.json_lines = json_lines
        self.console = console or Console(file=out, highlight=False, soft_wrap=True)
        self.live = not json_lines and self.console.is_terminal
        self._bars: EngineBars | None = None

    def __call__(self, event: control_pb2.ControlEvent) -> None:
        if self.json_lines:
            self._write(to_json(event))
            return
        kind = event.WhichOneof("event")
        if self.live and kind == "progress" and event.progress.total:
            if self._bars is None:
                self._bars = EngineBars(self.console)
            self._bars.update(event)
            return
        self.line(format_event(event))
        if self._bars is not None and kind in ("result", "error"):
            self._bars.finish(event.engine)

    def line(self, text: str) -> None:
        """Any human line (headers, summaries); on a terminal it scrolls above the bars."""
        if self._bars is not None:
            self._bars.print(Text(printable(text)))
        elif self.live:
            self.console.print(Text(printable(text)))
        else:
            self._write(printable(text))

    def close(self) -> None:
        """Take the bars down, so whatever prints next starts on its own line."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        self.out.flush()

    def outcome(self, outcome: Outcome) -> None:
        """The call's summary: nothing more in JSON (the Result events carried every state)."""
        self.close()
        if self.json_lines:
            return
        retried = f" after {outcome.attempts} attempts" if outcome.attempts > 1 else ""
        succeeded = len(set(outcome.results) - set(outcome.failed_engines))
        self.line(f"ok: {succeeded} engine(s){retried}")
        for engine, state in sorted(outcome.states().items()):
            self.line(f"  {engine} {format_state(state)}")
        if outcome.degraded:
            self.line(f"degraded: {len(outcome.failures)} engine(s) failed, tolerated "
                      "(max_failed_engines); route around them:")  # fmt: skip
            for text in format_tolerated(outcome.failures):
                self.line(text)

    def status(self, status: ServiceStatus) -> None:
        if self.json_lines:
            self._write(to_json(status.to_response()))
        elif self.live:
            self.console.print(status_table([status.engines[n] for n in sorted(status.engines)]))
        else:
            for name in sorted(status.engines):
                self.line(format_status(status.engines[name]))

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def print_error(error: ControlError, err: TextIO) -> None:
    """'error: CODE: message' and a line per failed engine, on stderr, escaped."""
    err.write("".join(printable(line) + "\n" for line in format_error(error)))
    err.flush()


class _Board(Progress):
    """rich's Progress showing its first task (the count of finished engines) and then at most
    `rows` engines, those furthest behind: 64 bars fit no terminal, and drawing them all on
    every refresh costs more than the call."""

    rows = MAX_ROWS

    def refresh(self) -> None:
        """Nothing: the refresh thread draws REFRESH_PER_SECOND times, not every new task."""

    def get_renderables(self) -> Iterable[RenderableType]:
        tasks = self.tasks
        if not tasks:
            return
        summary, *engines = tasks
        behind = sorted(engines, key=lambda task: task.percentage)[: self.rows]
        yield self.make_tasks_table([summary, *behind])


class EngineBars:
    """One live bar per engine, under a bar counting finished engines; an engine's bar goes away
    when its result arrives (its result line stays above), so the bars left are the ones behind."""

    def __init__(self, console: Console) -> None:
        self._progress = _Board(
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=console,
            transient=True,
            refresh_per_second=REFRESH_PER_SECOND,
        )
        self._progress.rows = max(1, min(MAX_ROWS, console.height - 2))
        self._engines: dict[str, TaskID] = {}  # the bars shown
        self._seen: set[str] = set()
        self._finished: set[str] = set()
        self._pending: list[Text] = []  # lines to print above the board, in one redraw
        self._all = self._progress.add_task("engines done", total=0, note="")
        self._progress.start()

    def update(self, event: control_pb2.ControlEvent) -> None:
        progress = event.progress
        task = self._engines.get(event.engine)
        if task is None:
            name = printable(event.engine or "-")
            task = self._engines[event.engine] = self._progress.add_task(name, note="")
            self._seen.add(event.engine)
            self._finished.discard(event.engine)  # a later step of a refit
            self._progress.update(self._all, total=len(self._seen))
        step = f"[{event.step}] " if event.step else ""
        note = printable(f"{step}{progress.stage} {progress.message}".strip())
        self._progress.update(task, total=progress.total, completed=progress.done, note=note)

    def finish(self, engine: str) -> None:
        task = self._engines.pop(engine, None)
        if task is None:
            return
        self._finished.add(engine)
        self._progress.remove_task(task)
        self._progress.update(self._all, completed=len(self._finished))

    def print(self, line: Text) -> None:
        """Print `line` above the board within FLUSH_S: each print redraws the whole board, so
        the lines of many engines go out together."""
        self._pending.append(line)
        if len(self._pending) > 1:
            return  # a flush is already due
        try:
            asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
        except RuntimeError:  # no event loop (a synchronous caller): print now
            self.flush()

    def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self._progress.console.print(Text("\n").join(lines))

    def stop(self) -> None:
        self.flush()
        self._progress.stop()


def status_table(engines: Sequence[control_pb2.EngineStatus]) -> Table:
    """GetStatus as a table: one row per engine, unreachable ones with the reason."""
    table = Table(
        "engine", "reachable", "paused", "version", "in flight", "digest", "error", "failed"
    )
    for status in engines:
        state = status.state
        cells = (
            f"{status.engine} (leaving)" if status.leaving else status.engine,
            "yes" if status.reachable else "NO",
            ("yes" if state.paused else "no") if status.reachable else "-",
            state.weight_version or "-",
            str(state.in_flight) if status.reachable else "-",
            short_digest(state.weight_digest),
            status.error or "",
            format_failure(status.failure) if status.HasField("failure") else "",
        )
        table.add_row(*(Text(printable(cell)) for cell in cells))
    return table
