"""Refit: pause -> update weights -> resume as one operation that never strands an engine.

Every RL framework strings the three calls together by hand, and the same failures recur: an
update fails and nobody resumes, a retry after a timeout pauses twice. Here the three steps run as
ordinary sub-operations (request ids `<id>/pause` ... : '/' cannot occur in a caller's id) under
one request_id that holds the engines for the whole refit, so no other mutation interleaves. If a
step fails, the failure policy runs: by default the engines resume serving their old weights (the
policy's resume is not bound by the overall timeout). The stream ends with one final Result per
engine, read from a fresh status probe, so the end state is proven rather than assumed.

With 64 replicas one sick engine should not stop the run: `max_failed_engines` lets that many
fail. A failed engine leaves the refit at the step it failed (no later step is sent to it, so it
is never resumed onto weights it did not load), the policy is applied to it alone after the
others have resumed, and its final Result says the step, its status and what the policy did, as
the final probe proves it (`_action`). Past the budget the refit fails as it always has.

What a refit costs an RL run is the time each engine stops generating, not the control calls:
the driver measures each engine's pause window (from its pause result to its resume result, by
the service's monotonic clock) and reports it in that engine's final Result (`paused_ms`) and to
`on_pause_window` (the Prometheus histogram).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from control_service.errors import ControlError, EngineFailure
from control_service.log import few_names
from control_service.protocol import names, wire
from control_service.protocol.names import STAY_PAUSED
from control_service.server.operations import Command, Event, FinalStatus, Operation, Subscriber

log = structlog.get_logger("control_service.server.refit")

FINAL_STEP = names.REFIT  # the step named in the final events: the refit's own

# Submits a step as a sub-operation of the refit.
SubmitStep = Callable[[Command, Operation], tuple[Operation, Subscriber]]
# Probes the engines' states: engine -> (state or None, error text).
Probe = Callable[[tuple[str, ...]], Awaitable[dict[str, tuple[dict[str, Any] | None, str]]]]
# Told each pause window that ended in a resume: (engine, seconds).
PauseWindowSink = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class StepResult:
    step: str
    outcome: FinalStatus
    results: dict[str, dict[str, Any]]  # engine -> result data, for engines that succeeded


class RefitDriver:
    """The task behind one Refit operation."""

    def __init__(
        self,
        op: Operation,
        submit: SubmitStep,
        probe: Probe,
        on_pause_window: PauseWindowSink | None = None,
    ) -> None:
        self.op = op
        self.command = op.command
        self.args = op.command.args
        self._submit = submit
        self._probe = probe
        self._on_pause_window = on_pause_window
        self._seq: dict[str, int] = {}
        # engine -> time.monotonic() of its pause result, and of its resume result after that.
        self._paused_at: dict[str, float] = {}
        self._resumed_at: dict[str, float] = {}
        # The engines still in the refit: a failed engine leaves it at the step it failed
        # (max_failed_engines), so no later step runs on it.
        self.live: tuple[str, ...] = op.command.engines
        # engine -> its failure (step set; the action is known after the final probe).
        self.failed: dict[str, EngineFailure] = {}
        self._never_paused: set[str] = set()  # failed staging: still serving its old weights

    async def run(self) -> None:
        try:
            outcome = await self._steps()
        except Exception as err:  # a bug here must not strand the caller or the engines
            c = self.command  # every line about a call names its request_id, method and engine
            log.exception("refit failed unexpectedly", request_id=c.request_id, method="Refit",
                          engine=few_names(c.engines))  # fmt: skip
            outcome = FinalStatus(grpc.StatusCode.INTERNAL, f"refit failed: {err!r}", (), False)
        states = await self._probe(self.command.engines)
        failures = {engine: dataclasses.replace(failure, action=self._action(failure, states))
                    for engine, failure in self.failed.items()}  # fmt: skip
        if failures:
            outcome = dataclasses.replace(outcome, failures=tuple(failures.values()))
            if outcome.ok:
                outcome = dataclasses.replace(outcome, message=self._degraded(failures))
        self.op.complete(outcome, self._final_events(states, failures))

    async def _steps(self) -> FinalStatus:
        a = self.args
        update_args = {"uri": a["uri"], "version": a["version"]}
        if a.get("stage", False):  # load while serving: the pause below only covers a swap
            staged = await self._step(names.STAGE_WEIGHTS, update_args, a["stage_timeout_s"])
            self._never_paused.update(f.engine for f in staged.outcome.failures)
            if not self._leave_failed(staged):
                return self._stage_failed(staged)
            update_args = {**update_args, names.STAGED: True}
        pause = await self._step(names.PAUSE, {"mode": a["mode"], "clear_cache": a["clear_cache"]},
                                 a["pause_timeout_s"])  # fmt: skip
        if not self._leave_failed(pause):
            return await self._fail(pause)
        update = await self._step(names.UPDATE_WEIGHTS, update_args, a["update_timeout_s"])
        skewed = self._skew(update)
        if not self._leave_failed(update, skewed):
            return await self._fail(update, skewed)
        resume = await self._step(names.RESUME, {}, a["resume_timeout_s"])
        if not self._leave_failed(resume):
            return await self._fail(resume)
        await self._apply_policy(self._policy_targets())
        return FinalStatus(grpc.StatusCode.OK, "", (), True)

    def _leave_failed(self, result: StepResult, skewed: tuple[EngineFailure, ...] = ()) -> bool:
        """Take the step's failed engines out of the refit; True while the refit may go on
        without them: they are within max_failed_engines (0: none may fail), and the step did
        not fail as a whole without naming an engine."""
        failures = result.outcome.failures + skewed
        for failure in failures:
            self.failed.setdefault(failure.engine, dataclasses.replace(failure, step=result.step))
        self.live = tuple(e for e in self.live if e not in self.failed)
        named = result.outcome.ok or bool(result.outcome.failures)
        return named and len(self.failed) <= self.command.max_failed

    def _policy_targets(self) -> tuple[str, ...]:
        """The engines on_failure acts on: every engine but those whose staging failed (never
        paused, so nothing to undo)."""
        return tuple(e for e in self.command.engines if e in self.failed
                     and e not in self._never_paused)  # fmt: skip

    async def _apply_policy(self, engines: tuple[str, ...]) -> StepResult | None:
        """on_failure for the engines that left a refit that goes on: resume them on the weights
        they have (their update never ran or failed: the old ones), or leave them paused.
        What it did is read back from the final probe (`_action`), not assumed here."""
        if not engines or self.args["on_failure"] == STAY_PAUSED:
            return None
        return await self._policy_resume(engines)

    def _action(
        self, failure: EngineFailure, states: dict[str, tuple[dict[str, Any] | None, str]]
    ) -> str:
        """What on_failure did with a failed engine, as its final state proves it."""
        if failure.engine in self._never_paused:
            return names.NOT_PAUSED
        if self.args["on_failure"] == STAY_PAUSED:
            return names.LEFT_PAUSED
        state = states.get(failure.engine, (None, ""))[0]
        if state is None or state["paused"]:
            return names.RESUME_FAILED
        if state["weight_version"] == self.args["version"]:
            return names.RESUMED_NEW_WEIGHTS
        return names.RESUMED_OLD_WEIGHTS

    def _degraded(self, failures: dict[str, EngineFailure]) -> str:
        """An OK refit's log line: how many engines finished it, and each one that did not."""
        listed = "; ".join(f"{f.engine} failed {f.step}: {f.code.name}: {f.message} "
                           f"({f.action})" for f in failures.values())  # fmt: skip
        n = len(self.command.engines)
        return (
            f"refit finished on {n - len(failures)} of {n} engines; tolerated "
            f"(max_failed_engines={self.command.max_failed}): {listed}"
        )

    async def _step(
        self,
        step: str,
        args: dict[str, Any],
        step_timeout: float | None,
        attempt: int = 0,
        engines: tuple[str, ...] | None = None,
    ) -> StepResult:
        """Run one step as a sub-operation on the live engines (or `engines`); relay its events
        tagged with the step. attempt > 0 marks the failure policy's resume, which the refit's
        deadline does not bind."""
        loop = asyncio.get_running_loop()
        rid = self.command.request_id
        if attempt:
            deadline, sub_id = loop.time() + (step_timeout or 0.0), f"{rid}/policy-{step}-{attempt}"
        else:
            deadline, sub_id = self.command.deadline, f"{rid}/{step}"
            if step_timeout is not None:
                deadline = min(deadline, loop.time() + step_timeout)
        command = Command(sub_id, step, args, self.live if engines is None else engines, deadline)
        try:
            op, sub = self._submit(command, self.op)
        except ControlError as err:  # the step could not start (slot budget, say): it failed
            failures = tuple(EngineFailure(e, err.code, err.message) for e in command.engines)
            return StepResult(step, FinalStatus(err.code, err.message, failures, False), {})
        results: dict[str, dict[str, Any]] = {}
        async for event in sub:
            self._publish(event.engine, event.reply, step)
            if event.reply.kind == wire.RESULT:
                results[event.engine] = event.reply.data
                self._clock(step, event.engine, time.monotonic())
        assert op.outcome is not None
        return StepResult(step, op.outcome, results)

    def _clock(self, step: str, engine: str, now: float) -> None:
        """Open an engine's pause window at its pause result, close it at its resume result."""
        if step == names.PAUSE:
            self._paused_at[engine] = now
        elif step == names.RESUME and engine in self._paused_at:
            self._resumed_at[engine] = now
            if self._on_pause_window is not None:
                self._on_pause_window(engine, now - self._paused_at[engine])

    def _paused_ms(self, engine: str, now: float) -> float:
        """The engine's pause window; one still open (left paused) runs up to `now`."""
        start = self._paused_at.get(engine)
        if start is None:
            return 0.0
        return (self._resumed_at.get(engine, now) - start) * 1000.0

    def _skew(self, update: StepResult) -> tuple[EngineFailure, ...]:
        version = self.args["version"]
        return tuple(
            EngineFailure(engine, grpc.StatusCode.INTERNAL,
                          f"reported version {data['state']['weight_version']!r}, not {version!r}")
            for engine, data in update.results.items()
            if data["state"]["weight_version"] != version
        )  # fmt: skip

    def _stage_failed(self, staged: StepResult) -> FinalStatus:
        """Staging runs before the pause: when it fails, every engine is still serving."""
        o = staged.outcome
        message = f"{staged.step} failed: {o.message}; nothing was paused"
        return FinalStatus(o.code, message, o.failures, o.engine_reported)

    async def _fail(
        self, failed: StepResult, skewed: tuple[EngineFailure, ...] = ()
    ) -> FinalStatus:
        """Apply the failure policy to every engine the refit paused (those that left it earlier
        included); end with the failing step's status, saying what was done."""
        failures = tuple(self.failed.values())
        code = failed.outcome.code if not failed.outcome.ok else grpc.StatusCode.INTERNAL
        what = failed.outcome.message if not failed.outcome.ok else ""
        if skewed:
            listed = "; ".join(f"{f.engine}: {f.message}" for f in skewed)
            what = f"{what}; version skew: {listed}" if what else f"version skew: {listed}"
        this_step = {f.engine for f in failed.outcome.failures + skewed}
        earlier = [f for f in failures if f.engine not in this_step]
        if earlier:  # engines that left the refit before, within max_failed_engines
            listed = "; ".join(f"{f.engine} ({f.step}): {f.code.name}: {f.message}"
                               for f in earlier)  # fmt: skip
            what = f"{what}; failed before: {listed}"
        policy = self.args["on_failure"]
        if policy == STAY_PAUSED:
            did = "engines left paused (on_failure=STAY_PAUSED)"
        else:
            targets = tuple(e for e in self.command.engines if e not in self._never_paused)
            resumed = await self._policy_resume(targets)
            resumed_names = ", ".join(targets)
            did = (
                f"resumed {resumed_names} on their previous weights (on_failure=RESUME_OLD_WEIGHTS)"
                if resumed.outcome.ok
                else f"on_failure=RESUME_OLD_WEIGHTS could not resume: {resumed.outcome.message}"
            )
        message = f"{failed.step} failed: {what}; {did}"
        return FinalStatus(code, message, failures, failed.outcome.engine_reported)

    async def _policy_resume(self, engines: tuple[str, ...]) -> StepResult:
        """Resume, retrying while an engine answers ABORTED: it is still unwinding the step we
        just cancelled. Bounded by the policy's own time budget, not the refit's deadline."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.args["policy_timeout_s"]
        delay = 0.02
        attempt = 0
        while True:
            attempt += 1
            resumed = await self._step(
                names.RESUME, {}, give_up - loop.time(), attempt=attempt, engines=engines
            )
            busy = resumed.outcome.code is grpc.StatusCode.ABORTED
            if not busy or loop.time() + delay >= give_up:
                return resumed
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _publish(self, engine: str, reply: wire.Reply, step: str) -> None:
        """Relay a step's event with the refit's own per-engine numbering."""
        seq = self._seq.get(engine, 0) + 1
        self._seq[engine] = seq
        self.op.publish(Event(engine, seq, reply, step))

    def _final_events(
        self,
        states: dict[str, tuple[dict[str, Any] | None, str]],
        failures: dict[str, EngineFailure],
    ) -> list[Event]:
        """One final Result per engine, from a fresh status probe: the proven end state. An
        engine that failed a step gets a Result that says so (state unset when unknown)."""
        now = time.monotonic()  # uvloop's loop.time() ticks in whole milliseconds
        finals: list[Event] = []
        rid = self.command.request_id
        for engine in self.command.engines:
            state, error = states.get(engine, (None, "no status"))
            seq = self._seq.get(engine, 0) + 1
            self._seq[engine] = seq
            failure = failures.get(engine)
            if state is None and failure is None:
                reply = wire.error(rid, "UNAVAILABLE", f"state unknown after refit: {error}")
            else:
                reply = _final_result(rid, state, error)
                reply.data["paused_ms"] = self._paused_ms(engine, now)  # the service's, not wire
            event = Event(engine, seq, reply, FINAL_STEP, failure)
            self.op.publish(event)
            finals.append(event)
        return finals


def _final_result(request_id: str, state: dict[str, Any] | None, error: str) -> wire.Reply:
    if state is not None:
        return wire.result(request_id, state, "final state after refit")
    reply = wire.result(request_id, {}, f"state unknown after refit: {error}")
    del reply.data["state"]  # unset in the Result: nothing proven
    return reply
