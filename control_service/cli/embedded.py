"""Engine-stub subprocesses for `serve --embedded-engines N` and the demo.

Each engine binds an endpoint the OS picks (an ipc:// socket in a private temp dir, or
tcp://127.0.0.1:0) and reports the actual one in its ready line, so nothing is guessed and nothing
collides. Readiness is that line, awaited with a bound (no sleeps). The engines' stdout and
stderr are drained for their whole life: an engine that logs every request would otherwise block
on a full pipe after a few thousand training steps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from control_service.errors import ControlError
from control_service.server.config import EngineConfig

ENGINE_STUB_COMMAND: tuple[str, ...] = (sys.executable, "-m", "engine_stub")
STDERR_TAIL_LINES = 20
MAX_LINE_BYTES = 1 << 20
LineCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class _Engine:
    """One running engine process and the tasks draining its pipes."""

    name: str
    process: asyncio.subprocess.Process
    endpoint: str = ""
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES)
    )
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class EmbeddedEngines:
    """An async context manager running `count` engine_stub processes.

    ``async with EmbeddedEngines(2) as engines:`` yields their EngineConfigs (named engine-0,
    engine-1, ...); on exit each gets SIGTERM, and SIGKILL if still alive after `stop_timeout_s`.
    Engines run in their own session (hence process group) so a terminal's Ctrl-C reaches only
    the service, which then stops gracefully before its engines go away. This runs on both event
    loops the CLI may pick (control_service/cli/aio.py).

    extra_args: passed through to every engine_stub command line.
    forward_stderr: copy the engines' logs to our stderr (engine_stub names itself in each line);
        otherwise only their last lines are kept, to explain a failed start.
    on_line: called with (engine name, parsed JSON) for each event line after the ready line.
    command: the engine program (tests substitute their own).
    """

    def __init__(
        self,
        count: int = 1,
        *,
        transport: Literal["ipc", "tcp"] = "ipc",
        extra_args: Sequence[str] = (),
        name_prefix: str = "engine",
        ready_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
        forward_stderr: bool = True,
        on_line: LineCallback | None = None,
        command: Sequence[str] = ENGINE_STUB_COMMAND,
    ) -> None:
        if count < 1:
            raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, "need at least one engine")
        if transport not in ("ipc", "tcp"):
            raise ControlError(grpc.StatusCode.INVALID_ARGUMENT, f"bad transport {transport!r}")
        self.count = count
        self.transport = transport
        self.extra_args = tuple(extra_args)
        self.name_prefix = name_prefix
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.forward_stderr = forward_stderr
        self.on_line = on_line
        self.command = tuple(command)
        self._engines: list[_Engine] = []
        self._tmpdir: str | None = None

    async def __aenter__(self) -> tuple[EngineConfig, ...]:
        return await self.start()

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.stop()

    @property
    def engines(self) -> tuple[EngineConfig, ...]:
        """The running engines as the service configures them (actual endpoints)."""
        return tuple(EngineConfig(e.name, e.endpoint) for e in self._engines)

    @property
    def returncodes(self) -> tuple[int | None, ...]:
        """Exit codes once stopped (negative: killed by that signal)."""
        return tuple(e.process.returncode for e in self._engines)

    async def start(self) -> tuple[EngineConfig, ...]:
        """Start every engine and wait for all their ready lines; on any failure stop them all."""
        if self.transport == "ipc":
            self._tmpdir = tempfile.mkdtemp(prefix="control-service-")
        names = [f"{self.name_prefix}-{i}" for i in range(self.count)]
        tasks = [asyncio.create_task(self._start_one(name)) for name in names]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one failed (or we were cancelled): abandon the others' starts
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop()
            raise
        return self.engines

    async def stop(self) -> None:
        """SIGTERM every engine, SIGKILL those still alive after the bound, remove the temp dir."""
        engines, self._engines = self._engines, []
        try:
            await asyncio.gather(*(self._stop_one(engine) for engine in engines))
        finally:
            self._engines = engines  # keep pids/returncodes readable after stop
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    # ------------------------------------------------------------------------------ internals

    def _endpoint(self, name: str) -> str:
        if self.transport == "tcp":
            return "tcp://127.0.0.1:0"
        assert self._tmpdir is not None
        return f"ipc://{self._tmpdir}/{name}.sock"

    async def _start_one(self, name: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *self.command,
            "--bind",
            self._endpoint(name),
            "--name",
            name,
            *self.extra_args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_LINE_BYTES,
            # A session of its own (so a process group of its own): the portable spelling, as
            # uvloop rejects `process_group` (ValueError: unexpected kwargs).
            start_new_session=True,
        )
        engine = _Engine(name, process)
        self._engines.append(engine)
        engine.tasks.append(asyncio.create_task(self._drain_stderr(engine)))
        try:
            engine.endpoint = await asyncio.wait_for(self._read_ready(engine), self.ready_timeout_s)
        except TimeoutError:
            await self._stop_one(engine)
            raise self._start_error(engine, f"not ready within {self.ready_timeout_s:g}s") from None
        except EOFError:
            await self._stop_one(engine)
            code = engine.process.returncode
            raise self._start_error(engine, f"exited with code {code} before ready") from None
        engine.tasks.append(asyncio.create_task(self._drain_stdout(engine)))

    def _start_error(self, engine: _Engine, what: str) -> ControlError:
        tail = " | ".join(engine.stderr_tail)
        message = f"embedded engine {engine.name} {what}" + (f": {tail}" if tail else "")
        return ControlError(grpc.StatusCode.UNAVAILABLE, message)

    async def _read_ready(self, engine: _Engine) -> str:
        """The endpoint from the first {"event": "ready"} line; EOFError if stdout closes first."""
        assert engine.process.stdout is not None
        while True:
            line = await _readline(engine.process.stdout)
            if not line:
                raise EOFError
            event = _parse(line)
            if event.get("event") == "ready" and isinstance(event.get("endpoint"), str):
                return event["endpoint"]

    async def _drain_stdout(self, engine: _Engine) -> None:
        assert engine.process.stdout is not None
        while line := await _readline(engine.process.stdout):
            if self.on_line is not None:
                self.on_line(engine.name, _parse(line))

    async def _drain_stderr(self, engine: _Engine) -> None:
        assert engine.process.stderr is not None
        while raw := await _readline(engine.process.stderr):
            text = raw.decode(errors="replace").rstrip("\n")
            engine.stderr_tail.append(text)
            if self.forward_stderr:
                print(text, file=sys.stderr, flush=True)

    async def _stop_one(self, engine: _Engine) -> None:
        process = engine.process
        if process.returncode is None:
            _signal(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.stop_timeout_s)
            except TimeoutError:
                _signal(process, signal.SIGKILL)
                await process.wait()
        await self._finish_tasks(engine)

    async def _finish_tasks(self, engine: _Engine) -> None:
        """Let the drains read to EOF (bounded: a grandchild could hold a pipe open)."""
        tasks, engine.tasks = engine.tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
    """os.kill, not Process.send_signal: Popen.send_signal polls first, and that poll can reap an
    engine that just exited before asyncio's child watcher does, which then reports exit code
    255 instead of the engine's own (CPython's Popen.poll/child-watcher race)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)


async def _readline(stream: asyncio.StreamReader) -> bytes:
    """The next line, or b"" at EOF; an overlong line is dropped (the reader skips past it)."""
    while True:
        try:
            return await stream.readline()
        except ValueError:
            continue


def _parse(line: bytes) -> dict[str, Any]:
    """A JSON event line as a dict; anything else as {} (engines may print stray text)."""
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
