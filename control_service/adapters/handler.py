"""The adapter's state machine: an EngineHandler that drives one engine through its HTTP API.

It owns the engine's safety, which the engine's own API leaves to its callers:
- it knows whether the engine is paused (read at start, after every error, and whenever unknown)
  and never sends a pause to a paused engine or a resume to a serving one; a resume whose answer
  never came blocks the next one until a read shows the engine serving (a duplicate resume can
  deadlock vLLM with data parallelism);
- every request is bounded by the call's deadline (and the step's cap), a little earlier than the
  deadline so the failure it reports carries what a fresh read found; a cancelled step
  reconciles in the background;
- it fails mutations with UNAVAILABLE at once when the engine cannot be reached, while the
  adapter stays up and `status` says why.

One mutation at a time is the engine library's duty; the lock here keeps the state machine whole
even if this handler is ever driven otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from control_service.adapters.api import EngineApi, Observed
from control_service.adapters.config import AdapterConfig
from control_service.adapters.http import HttpError
from control_service.engine import Capabilities, Done, EngineError, EngineState, Operation
from control_service.protocol import names

log = logging.getLogger("control_service.adapters")

T = TypeVar("T")
_UNREACHABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
_MIN_STEP_S = 0.05


class AdapterHandler:
    def __init__(self, api: EngineApi, config: AdapterConfig) -> None:
        self.api = api
        self.config = config
        self.paused: bool | None = None  # None: not known (not read yet, or the read failed)
        self.mode: str | None = None  # how this adapter paused it (KEEP changes the load)
        self.version = ""  # read from the engine, or (no version query) the one last set
        self.resume_in_doubt = ""  # the request_id of a resume that got no answer
        self.read_error: HttpError | None = None  # why the last read failed
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------------- reading

    def capabilities(self) -> Capabilities:
        api = self.api
        return Capabilities(
            pause_modes=api.pause_modes,
            cancel=False,  # no engine can stop a running load; abandoning the request is no cancel
            progress=True,
            flags=(("clear_cache", api.clear_cache), ("version_query", api.has_version)),
        )

    async def status(self) -> EngineState:
        try:
            seen = await self.api.observe(self.config.status_timeout_s)
        except HttpError as err:
            raise self._error(err, "status") from None
        return self._state(seen)

    def _state(self, seen: Observed) -> EngineState:
        notes = [seen.note] if seen.note else []
        version = seen.version
        if not self.api.has_version:
            version = self.version
            notes.append(
                f"{self.api.label} has no version query: weight_version is the one this adapter "
                + ("last set" if version else "has set (none since it started)")
            )
        return EngineState(seen.paused, version, seen.in_flight, message="; ".join(notes))

    async def reconcile(self, timeout: float | None = None) -> str:
        """Read what is true and adopt it; say it in a few words (for logs and error messages)."""
        try:
            seen = await self.api.observe(timeout or self.config.status_timeout_s)
        except HttpError as err:
            self.paused, self.read_error = None, err
            return f"the engine's state is unknown ({err.message})"
        self.paused, self.read_error = seen.paused, None
        if not seen.paused:
            self.mode = None
            self.resume_in_doubt = ""
        if self.api.has_version:
            self.version = seen.version
        state = "paused" if seen.paused else "serving"
        return f"the engine is {state}, version {self.version or '(none)'}"

    # ----------------------------------------------------------------------------- mutations

    async def pause(self, op: Operation, mode: str, clear_cache: bool) -> Done:
        api = self.api
        if clear_cache and not api.clear_cache:
            raise EngineError("FAILED_PRECONDITION", f"{api.label} cannot clear its cache on pause")
        async with self._lock:
            await self._known(op)
            if self.paused:
                return Done(f"already paused (mode {self.mode or 'unknown'}): nothing sent")
            op.accepted(f"{api.label}: pause, mode {mode}")
            before = await self._running() if mode in (names.ABORT, names.WAIT) else None
            op.progress("pausing", 0, 1, f"mode {mode}")
            ticker = self._drain_ticker(op, before) if mode == names.WAIT else None
            await self._step(op, "pause", self.config.pause_timeout_s, ticker,
                             lambda t: api.pause(mode, clear_cache, t))  # fmt: skip
            self.paused, self.mode = True, mode
            op.progress("pausing", 1, 1, "paused")
            count = before or 0
            return Done(
                f"{api.label} paused (mode {mode})",
                aborted=count if mode == names.ABORT else 0,
                drained=count if mode == names.WAIT else 0,
            )

    async def update_weights(self, op: Operation, uri: str, version: str) -> Done:
        api = self.api
        async with self._lock:
            await self._known(op)
            if not self.paused:
                raise EngineError("FAILED_PRECONDITION", "update_weights needs a paused engine")
            op.accepted(f"{api.label}: load {uri} as version {version}")
            started = time.monotonic()
            stage = ["loading"]

            def phase(name: str) -> None:
                stage[0] = name
                op.progress(name, 0, 1, f"after {time.monotonic() - started:.1f}s")

            op.progress("loading", 0, 0, uri)
            ticker = self._load_ticker(op, stage, started)
            message = await self._step(op, "load", self.config.load_timeout_s, ticker,
                                       lambda t: api.load(uri, version, self.mode == names.KEEP, t,
                                                          phase))  # fmt: skip
            if api.has_version:
                await self.reconcile(min(self.config.status_timeout_s, _left(op)))
                if self.version != version:
                    raise EngineError("INTERNAL", f"{message}; but the engine now reports "
                                      f"version {self.version or '(unknown)'}")  # fmt: skip
            else:
                self.version = version
            op.progress(stage[0], 1, 1, "done")
            return Done(message)

    async def resume(self, op: Operation) -> Done:
        api = self.api
        async with self._lock:
            if self.resume_in_doubt:  # did that resume take effect after all? (clears if so)
                await self.reconcile(max(min(self.config.status_timeout_s, _left(op)), _MIN_STEP_S))
            await self._known(op)
            if self.paused is False:
                return Done("already serving: nothing sent")
            if self.resume_in_doubt:
                raise EngineError(
                    "FAILED_PRECONDITION",
                    f"resume {self.resume_in_doubt} got no answer and {api.label} still reads "
                    "paused; a second resume can deadlock it (vLLM with data parallelism): check "
                    "the engine; this clears once it reads serving",
                )
            op.accepted(f"{api.label}: resume")
            op.progress("resuming", 0, 1)

            def in_doubt() -> None:
                self.resume_in_doubt = op.request_id

            await self._step(op, "resume", self.config.resume_timeout_s, None, api.resume,
                             in_doubt)  # fmt: skip
            self.paused, self.mode = False, None
            op.progress("resuming", 1, 1, "serving")
            return Done(f"{api.label} serving")

    # ------------------------------------------------------------------------------- helpers

    async def _known(self, op: Operation) -> None:
        """The state must be known before anything is sent: read it if not (UNAVAILABLE now if
        the engine cannot be reached)."""
        if self.paused is None:
            await self.reconcile(max(min(self.config.status_timeout_s, _left(op)), _MIN_STEP_S))
            if self.paused is None:
                why = self.read_error or HttpError("UNAVAILABLE", "no state read")
                raise self._error(why, "reading its state")

    async def _step(
        self,
        op: Operation,
        what: str,
        cap: float | None,
        ticker: Callable[[], Coroutine[Any, Any, None]] | None,
        call: Callable[[float], Awaitable[T]],
        in_doubt: Callable[[], None] | None = None,
    ) -> T:
        """One engine request within the call's deadline (and `cap`), ended early enough to
        reconcile before the deadline; any failure is followed by a reconcile. `in_doubt` runs
        when the request may have reached the engine but its answer never came."""
        remaining = _left(op)
        budget = remaining - min(1.0, 0.2 * remaining)  # keep a margin to reconcile in
        if cap is not None:
            budget = min(budget, cap)
        tick = asyncio.create_task(ticker()) if ticker is not None else None
        try:
            return await call(max(budget, _MIN_STEP_S))
        except HttpError as err:
            if in_doubt is not None and err.sent and err.code in _UNREACHABLE:
                in_doubt()
            found = await self.reconcile(max(min(self.config.status_timeout_s, _left(op)),
                                             _MIN_STEP_S))  # fmt: skip
            raise self._error(err, what, found) from None
        except asyncio.CancelledError:
            if in_doubt is not None:
                in_doubt()
            self.paused = None
            self._reconcile_later(what)
            raise
        finally:
            if tick is not None:
                tick.cancel()

    def _error(self, err: HttpError, what: str, found: str = "") -> EngineError:
        where = f"{self.api.label} at {self.config.url}"
        text = f"{where}: {what}: {err.message}"
        if err.code == "UNAVAILABLE":
            text = f"{where} is unreachable: {err.message}"
        return EngineError(err.code, f"{text}; {found}" if found else text)

    def _reconcile_later(self, after: str) -> None:
        async def run() -> None:
            found = await self.reconcile()
            log.info("reconciled after a cancelled %s: %s", after, found)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _running(self) -> int | None:
        with contextlib.suppress(HttpError):
            return await self.api.running(self.config.status_timeout_s)
        return None

    def _drain_ticker(
        self, op: Operation, before: int | None
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def tick() -> None:
            while True:
                await asyncio.sleep(self.config.progress_interval_s)
                now = await self._running()
                if before is not None and now is not None:
                    op.progress("draining", max(before - now, 0), before, f"{now} running")

        return tick

    def _load_ticker(
        self, op: Operation, stage: list[str], started: float
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def tick() -> None:
            budget = int(_left(op))
            while True:
                await asyncio.sleep(self.config.progress_interval_s)
                elapsed = time.monotonic() - started
                op.progress(stage[0], int(elapsed), budget, f"{elapsed:.0f}s of at most {budget}s")

        return tick


def _left(op: Operation) -> float:
    return op.time_remaining()
