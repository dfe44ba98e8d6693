"""Callers that never read, all attached to one operation whose engine streams progress fast:
the healthy engine stays up and the service keeps answering (defect: each reply was fanned out
to every attached caller inside a read loop that never yielded; the loop stalled for seconds,
libzmq stopped reading the engine's connection, heartbeats included, and the engine was
declared dead)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import wire
from tests.harness import StartService, eventually
from tests.scripted_engine import ScriptedEngine, healthy
from tests.stub_process import REPO

CALLERS = 2_000
MARKS: dict[str, float] = {}
CHANNELS = 20  # 100 streams per connection
MIN_FLOOD_S = 2.0
HOLD_S = 3.0
PROGRESS_PER_S = 1_000
HEALTH_BOUND_S = 0.2
HEALTH_WORST_S = 2.0


class Flood:
    """The engine's script: Pause streams progress at PROGRESS_PER_S until released (at least
    MIN_FLOOD_S), then its result."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent = 0

    def __call__(self, request: wire.Request) -> Iterator[bytes]:
        if request.method != "pause":
            yield from healthy(request)
            return
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < MIN_FLOOD_S or not self.release.is_set():
            assert elapsed < 60, "never released"
            while self.sent < elapsed * PROGRESS_PER_S:
                self.sent += 1
                yield wire.encode_reply(wire.progress(request.request_id, "drain", self.sent, 0))
            time.sleep(0.005)
        yield from healthy(request)


class HealthProber:
    """Health checks from their own thread and channel, back to back: the slowest answer."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.slowest = 0.0
        self.answers = 0
        self.samples: list[tuple[float, float]] = []
        self.failures: list[str] = []
        self.failed_at: list[float] = []  # when each failed check started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest(service="control.v1.ControlService")
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = check(request, timeout=5)
                except grpc.RpcError as err:
                    self.failures.append(str(err.code()))
                    self.failed_at.append(started)
                    continue
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.samples.append((started, time.monotonic() - started))
                self.answers += 1
                if response.status != health_pb2.HealthCheckResponse.SERVING:
                    self.failures.append("NOT_SERVING")
                self._stop.wait(0.02)

    def __enter__(self) -> HealthProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


async def test_callers_that_never_read_do_not_starve_the_loop_or_kill_the_engine(
    start_service: StartService,
) -> None:
    flood = Flood()
    with ScriptedEngine(flood) as engine:
        service = await start_service({"e0": engine.endpoint})
        link = service.server.links["e0"]
        request = pb.PauseRequest(request_id="flood-1", timeout={"seconds": 30})
        limit = service.server.config.max_callers_per_operation
        callers = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.idle_callers", service.target, "flood-1",
            str(CALLERS), str(CHANNELS), cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert callers.stdin is not None and callers.stdout is not None
        with HealthProber(service.target) as prober:
            try:
                assert json.loads(await asyncio.wait_for(callers.stdout.readline(), 30))
                await eventually(lambda: prober.answers > 0)  # its channel is connected
                reader = asyncio.ensure_future(service.events("Pause", request, timeout=60))
                await eventually(lambda: "flood-1" in service.server.dispatcher.running)
                callers.stdin.write(b"go\n")
                await callers.stdin.drain()
                MARKS["go"] = time.monotonic()
                assert json.loads(await asyncio.wait_for(callers.stdout.readline(), 30))
                MARKS["started"] = time.monotonic()
                op = service.server.dispatcher.running["flood-1"]
                counts = service.server.metrics.call_stats.counts
                await eventually(  # the callers reach the bound, under the flood
                    lambda: (
                        len(op.subscribers) == limit
                        and counts.get(("Pause", "RESOURCE_EXHAUSTED"), 0) > 0
                    ),
                    timeout=30,
                )
                MARKS["bound"] = time.monotonic()
                assert not reader.done(), "the flood was still on while they attached"
                await asyncio.sleep(HOLD_S)  # the flood goes on, more callers arrive
                flood.release.set()
                MARKS["release"] = time.monotonic()
                events = await reader
                MARKS["result"] = time.monotonic()
                callers.stdin.write(b"report\n")
                await callers.stdin.drain()
                codes = json.loads(await asyncio.wait_for(callers.stdout.readline(), 30))["codes"]
                # Stop probing before the callers' process exits below. From a thread: the
                # service runs on this loop, and joining the prober here would block it, so the
                # check in flight could not be answered and timed out (the "lost check" once
                # seen in full-suite runs was this, not the service).
                await asyncio.to_thread(prober.stop)
            finally:
                if callers.returncode is None:
                    callers.kill()
                await callers.wait()
        assert events[-1].result.state.paused, "the call ended with the engine's result"
        assert link.up and link.counters.disconnects == 0, "the engine was never declared dead"
        t0 = prober.samples[0][0]
        print("phases (s):", {k: round(v - t0, 2) for k, v in MARKS.items()})
        print("failed checks (code, s after t0):",
              [(c, round(at - t0, 2)) for c, at in zip(prober.failures, prober.failed_at,
                                                       strict=True)])  # fmt: skip
        assert not prober.failures, "every check answered, SERVING, through the flood and after"
        worst = sorted(((round(b, 3), round(a - t0, 2)) for a, b in prober.samples), reverse=True)
        latencies = sorted(b for _, b in prober.samples)
        p95 = latencies[int(len(latencies) * 0.95)]
        print(f"engine sent {flood.sent} progress; health: {prober.answers} answers, p95 "
              f"{p95 * 1000:.0f} ms, slowest {prober.slowest * 1000:.0f} ms {worst[:3]}; to the "
              f"reader: {len(events) - 1}; idle callers: {codes}")  # fmt: skip
        # This machine is shared (2 cores, load measured at 10-55 during these runs): a process
        # can wait hundreds of ms for a core whatever its loop does. So: 95% of answers within
        # the 200 ms bound, and none anywhere near the multi-second stalls of the defect
        # (0.9-12.6 s, with the engine declared dead, which is asserted above).
        assert p95 < HEALTH_BOUND_S, f"95% of health checks within {p95:.3f}s"
        assert prober.slowest < HEALTH_WORST_S, f"a health check took {prober.slowest:.3f}s"
        refused = service.server.metrics.call_stats.counts[("Pause", "RESOURCE_EXHAUSTED")]
        assert refused == codes.get("RESOURCE_EXHAUSTED"), "callers past the bound: refused"
