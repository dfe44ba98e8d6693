"""Soak: 100,000 mixed calls with injected faults against a service in its own process.

    .venv/bin/python -m bench.soak [--calls 100000] [--workers 16]
    .venv/bin/python -m bench.soak --chaos [--minutes 10]

Prints calls by final status, lost replies (a call the service never ended: it must be 0), open
slots at the end (must be 0) and the service's RSS growth after warm-up (target < 5 MB).
Faults injected: bad request ids, unknown engines, engine-reported errors, silent engines and
short deadlines, client cancellations, retries with the same request_id (attach / replay / other
arguments), garbage frames, and an engine killed and restarted on the same endpoint.

--chaos runs the same mixed calls for --minutes over CURVE-encrypted links while bench/chaos.py
takes an engine's endpoint every few seconds (SIGKILL and restart, SIGSTOP, an oversize frame,
a refused CURVE key then the right one, a flood of progress) and callers attach to one call and
stop reading; it prints calls by final status, calls without one (must be 0), open slots at the
end (must be 0), the links' recoveries, and the service's RSS at the start and the end.

Beside RSS both print glibc's malloc in use and Python's live blocks, and the RSS after
malloc_trim(0), to tell memory held from memory the allocator keeps (docs/benchmarks.md, "Where
the drift is"). Diagnostics: SOAK_ONLY=KIND, SOAK_TRACEMALLOC=DIR (then `python -m bench.memdiff`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.procs import rss_kb  # noqa: E402
from control_service.cli.aio import run  # noqa: E402
from control_service.gen.control.v1 import control_pb2 as pb  # noqa: E402
from control_service.gen.control.v1 import control_pb2_grpc  # noqa: E402
from tests.stub_process import StubProcess  # noqa: E402

ENGINES = 4
LINKS_PER_ENGINE = 4
CALL_TIMEOUT_S = 2
CLIENT_MARGIN_S = 5.0  # past the request's own timeout: a call still open then was lost


# ------------------------------------------------------------------------- the service process


async def serve(endpoints: list[str]) -> None:
    """The service under soak; prints its port, then answers 'stats' lines on stdin.
    `--curve SERVER_PUBLIC CLIENT_SECRET` first: CURVE on every engine link."""
    from control_service.log import configure
    from control_service.server import ControlServer
    from control_service.server.config import EngineConfig, LinkConfig, ServiceConfig

    link = LinkConfig()
    if endpoints[0] == "--curve":
        link = LinkConfig(curve_server_key=Path(endpoints[1]), curve_client_key=Path(endpoints[2]))
        endpoints = endpoints[3:]

    configure("error")
    engines = tuple(
        EngineConfig(f"s{e}l{i}", ep)
        for e, ep in enumerate(endpoints)
        for i in range(LINKS_PER_ENGINE)
    )
    server = ControlServer(
        ServiceConfig(engines=engines, listen="127.0.0.1:0", detach_grace_s=0.2,
                      retry_max_records=1024, link=link)
    )  # fmt: skip
    port = await server.start()
    await server.wait_engines_up(15)
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    snapshots = _Snapshots.from_env()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "stats":
            if snapshots is not None:
                snapshots.take()
            links = server.links.values()
            print(json.dumps({
                "open_slots": server.open_slots,
                "running": len(server.dispatcher.running) if server.dispatcher else -1,
                "rss_kb": rss_kb(),
                "malloc_kb": _malloc_in_use_kb(),  # C heap in use: grpc, libzmq, Python's big blocks
                "py_blocks": sys.getallocatedblocks(),  # Python objects' memory blocks alive
                "unmatched": sum(link.slots.counters.unmatched for link in links),
                "malformed": sum(link.counters.malformed for link in links),
                "recreated": sum(link.counters.recreated for link in links),
                "disconnects": sum(link.counters.disconnects for link in links),
            }), flush=True)  # fmt: skip
        elif line.strip() == "trim":
            print(json.dumps({"rss_kb": _trimmed_rss_kb()}), flush=True)
    await server.stop(1.0)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]  # fmt: skip


def _malloc_in_use_kb() -> int:
    """glibc's own count of the bytes malloc has handed out and not had back (mallinfo2, every
    arena): where RSS grows but this does not, the growth is pages the allocator keeps, not a
    leak; where this grows and Python's blocks do not, native code holds it."""
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd) // 1024


def _trimmed_rss_kb() -> int:
    """RSS once glibc has handed its free pages back (malloc_trim(0)): what the process still
    holds, as against what its allocator keeps for reuse. Growth that trimming removes is the
    allocator's (fragmentation across grpc's and libzmq's threads' arenas), not a leak."""
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_kb()


class _Snapshots:
    """SOAK_TRACEMALLOC=DIR: the service traces its Python allocations and writes a tracemalloc
    snapshot to DIR at every `stats` (after a full collection), for finding what holds memory
    that RSS shows growing: `python -m bench.memdiff DIR/stats-1.snap DIR/stats-2.snap`.
    A diagnostic: tracing allocations makes the service several times slower."""

    def __init__(self, directory: Path) -> None:
        import tracemalloc

        self.directory = directory
        self.taken = 0
        directory.mkdir(parents=True, exist_ok=True)
        tracemalloc.start(12)

    @classmethod
    def from_env(cls) -> _Snapshots | None:
        directory = os.environ.get("SOAK_TRACEMALLOC")
        return cls(Path(directory)) if directory else None

    def take(self) -> None:
        import gc
        import tracemalloc

        gc.collect()
        self.taken += 1
        tracemalloc.take_snapshot().dump(str(self.directory / f"stats-{self.taken}.snap"))


# ---------------------------------------------------------------------------------- the load


class Soak:
    def __init__(self, stub: control_pb2_grpc.ControlServiceStub, stubs: list[StubProcess]):
        self.stub = stub
        self.stubs = stubs
        self.by_status: collections.Counter[str] = collections.Counter()
        self.lost = 0
        self.lost_details: list[str] = []
        self.late: list[float] = []  # seconds: calls the service ended after the client's margin
        self.rng = random.Random(7)
        self.injected: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[str] = collections.deque(maxlen=64)

    async def call(self, n: int, lane: str) -> None:
        kind, rpc, request, timeout = self.pick(n, lane)
        if kind == "status":
            try:
                await self.stub.GetStatus(request, timeout=timeout)
                self.by_status["status:OK"] += 1
            except grpc.aio.AioRpcError as err:
                self.by_status[f"status:{err.code().name}"] += 1
            return
        started = time.perf_counter()
        try:
            events = []
            call = getattr(self.stub, rpc)(request, timeout=timeout + CLIENT_MARGIN_S)
            if kind == "cancel":
                await asyncio.sleep(0)  # the request is on its way: cancel mid-flight
                call.cancel()
                status = "CANCELLED(client)"
            else:
                async for event in call:
                    events.append(event)
                status = "OK"
                if not any(e.HasField("result") for e in events):
                    self.lost += 1  # OK without a result: a lost reply
        except grpc.aio.AioRpcError as err:
            status = err.code().name
            if time.perf_counter() - started >= timeout + CLIENT_MARGIN_S * 0.9:
                # The client's own margin ran out. Its deadline (grpc's "Deadline Exceeded"):
                # the service never ended the call. A status the service sent, only late (its
                # loop starved of CPU on this shared machine): counted apart, with the delay.
                if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED and err.details() == (
                    "Deadline Exceeded"
                ):
                    self.lost += 1
                    self.lost_details.append(f"{kind} {request.request_id}")
                else:
                    self.late.append(round(time.perf_counter() - started, 1))
        except asyncio.CancelledError:
            status = "CANCELLED(client)"
        self.by_status[f"{kind}:{status}"] += 1

    def pick(self, n: int, lane: str) -> tuple[str, str, Any, float]:
        """SOAK_ONLY=KIND (pause, retry, short-deadline, ...): only that kind of call, drawn
        from the same mix (a diagnostic: which kind of call does what)."""
        only = os.environ.get("SOAK_ONLY")
        while True:
            got = self._pick(n, lane)
            if not only or got[0] == only:
                return got

    def _pick(self, n: int, lane: str) -> tuple[str, str, Any, float]:
        """One call on this worker's engine link: mostly healthy traffic, every fault mixed in."""
        r = self.rng.random()
        rid = f"soak-{n}"
        t = Duration(seconds=CALL_TIMEOUT_S)
        if r < 0.30:
            return (
                "pause",
                "Pause",
                pb.PauseRequest(request_id=rid, engines=[lane], timeout=t),
                CALL_TIMEOUT_S,
            )
        if r < 0.55:
            return (
                "resume",
                "Resume",
                pb.ResumeRequest(request_id=rid, engines=[lane], timeout=t),
                CALL_TIMEOUT_S,
            )
        if r < 0.70:
            request = pb.UpdateWeightsRequest(request_id=rid, uri="/ckpt", version=str(n),
                                              engines=[lane], timeout=t)  # fmt: skip
            return "update", "UpdateWeights", request, CALL_TIMEOUT_S
        if r < 0.78 and self.recent:
            old_id = self.rng.choice(self.recent)  # a retry: attach, replay or other arguments
            request = pb.PauseRequest(request_id=old_id, engines=[lane], timeout=t)
            return "retry", "Pause", request, CALL_TIMEOUT_S
        self.recent.append(rid)
        if r < 0.82:
            return (
                "bad-id",
                "Pause",
                pb.PauseRequest(request_id="bad id!", timeout=t),
                CALL_TIMEOUT_S,
            )
        if r < 0.85:
            return (
                "unknown-engine",
                "Pause",
                pb.PauseRequest(engines=["nope"], timeout=t),
                CALL_TIMEOUT_S,
            )
        if r < 0.90:
            short = Duration(nanos=50_000_000)
            return "short-deadline", "Resume", pb.ResumeRequest(request_id=rid, engines=[lane],
                                                                timeout=short), 0.05  # fmt: skip
        if r < 0.95:
            return (
                "cancel",
                "Pause",
                pb.PauseRequest(request_id=rid, engines=[lane], timeout=t),
                CALL_TIMEOUT_S,
            )
        return "status", "GetStatus", pb.GetStatusRequest(engines=[lane]), CALL_TIMEOUT_S


async def inject_faults(
    stubs: list[StubProcess],
    stop: asyncio.Event,
    restart: list[int],
    injected: collections.Counter[str],
) -> None:
    """Engine-side faults on a timer: errors, silence, garbage, one kill and restart."""
    rng = random.Random(11)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass
        victim = stubs[rng.randrange(1, len(stubs))]
        fault = rng.choice(["fail", "garbage", "garbage", "slow", "silent"])
        injected[fault] += 1
        try:
            if fault == "fail":
                await asyncio.to_thread(
                    victim.knob, fail_next={"code": "INTERNAL", "message": "soak"}
                )
            elif fault == "garbage":
                await asyncio.to_thread(victim.knob, garbage=True)
            else:  # a window of slow (late replies past short deadlines) or no replies
                on, off = ({"reply_delay": 0.2}, {"reply_delay": 0.0}) if fault == "slow" else (
                    {"silent": True}, {"silent": False})  # fmt: skip
                await asyncio.to_thread(victim.knob, **on)
                await asyncio.sleep(0.1)
                await asyncio.to_thread(victim.knob, **off)
        except Exception as err:  # noqa: BLE001 - a stub being restarted: skip this round
            print(f"fault injection skipped: {err!r}", file=sys.stderr)
        if restart and not stop.is_set():
            index = restart.pop()
            endpoint = stubs[index].endpoint
            stubs[index].kill()
            fresh = StubProcess()
            await asyncio.to_thread(fresh.start, "--instant", "--bind", endpoint)
            stubs[index] = fresh
            injected["kill+restart"] += 1


class SoakService:
    """The service process under soak (`--serve`), asked for its numbers over stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, timeout: float) -> None:
        self.process = process
        self.port = port
        self.timeout = timeout  # for each answer: the service may be slow under the soak

    @classmethod
    async def start(cls, args: list[str], timeout: float) -> SoakService:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__)), "--serve", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        self = cls(process, 0, timeout)
        self.port = (await self._answer(60))["port"]
        return self

    async def stats(self) -> dict[str, int]:
        return await self._ask("stats")

    async def settled(self, within: float) -> dict[str, int]:
        """The stats once nothing is open (bounded: cancelled operations may still be in their
        detach grace; a leak never settles and is reported), and the RSS after malloc_trim."""
        settle_by = time.perf_counter() + within
        end = await self.stats()
        while (end["open_slots"] or end["running"]) and time.perf_counter() < settle_by:
            await asyncio.sleep(0.1)
            end = await self.stats()
        end["trimmed_kb"] = (await self._ask("trim"))["rss_kb"]
        return end

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await asyncio.wait_for(self.process.wait(), 30)

    async def _ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        return await self._answer(self.timeout)

    async def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        answer: dict[str, Any] = json.loads(line)
        return answer


async def main(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    stubs = [StubProcess() for _ in range(ENGINES)]
    for i, stub in enumerate(stubs):
        stub.start("--instant", "--bind", f"ipc://{tmp}/engine-{i}.sock")
    service = await SoakService.start([s.endpoint for s in stubs], timeout=10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            soak = Soak(control_pb2_grpc.ControlServiceStub(channel), stubs)
            counter = iter(range(args.calls))
            warm = args.warmup

            lanes = [f"s{e}l{i}" for i in range(LINKS_PER_ENGINE) for e in range(ENGINES)]

            async def worker(w: int) -> None:
                # One engine link per worker: the service allows one mutation per engine.
                for n in counter:
                    await soak.call(n, lanes[w % len(lanes)])

            started = time.perf_counter()
            counter = iter(range(warm))
            await asyncio.gather(*(worker(w) for w in range(args.workers)))
            after_warmup = await service.stats()
            counter = iter(range(warm, args.calls))
            stop = asyncio.Event()
            faults = asyncio.ensure_future(inject_faults(stubs, stop, [0], soak.injected))
            await asyncio.gather(*(worker(w) for w in range(args.workers)))
            stop.set()
            await faults
            elapsed = time.perf_counter() - started
            end = await service.settled(10)
    finally:
        await service.close()
        for stub in stubs:
            stub.__exit__(None, None, None)
    report(args, soak, after_warmup, end, elapsed)
    ok = soak.lost == 0 and end["open_slots"] == 0 and end["running"] == 0
    return 0 if ok else 1


def report(args: argparse.Namespace, soak: Soak, warm: dict[str, int], end: dict[str, int],
           elapsed: float) -> None:  # fmt: skip
    total = sum(soak.by_status.values())
    rate = total / elapsed
    print(f"soak: {total} calls in {elapsed:.1f}s ({rate:.0f}/s), {args.workers} workers, "
          f"{ENGINES} engines x {LINKS_PER_ENGINE} links, nproc={os.cpu_count()}")  # fmt: skip
    print("calls by kind:final status")
    for key, count in sorted(soak.by_status.items()):
        print(f"  {key:<40} {count:>7}")
    growth_mb = (end["rss_kb"] - warm["rss_kb"]) / 1024
    print(f"engine faults injected: {dict(sorted(soak.injected.items()))}")
    print(f"lost replies: {soak.lost}")
    print(f"open slots at the end: {end['open_slots']} "
          f"(operations running: {end['running']})")  # fmt: skip
    print(f"late/unmatched engine replies dropped: {end['unmatched']}, "
          f"malformed frames: {end['malformed']}")  # fmt: skip
    before, after = warm["rss_kb"] / 1024, end["rss_kb"] / 1024
    print(f"service RSS: {before:.1f} MB after {args.warmup} calls, {after:.1f} MB at the end: "
          f"growth {growth_mb:+.2f} MB (target < 5 MB)")  # fmt: skip
    print(f"service malloc in use: {warm['malloc_kb'] / 1024:.2f} MB after {args.warmup} calls, "
          f"{end['malloc_kb'] / 1024:.2f} MB at the end; Python blocks {warm['py_blocks']} -> "
          f"{end['py_blocks']}")  # fmt: skip
    print(f"service RSS at the end after malloc_trim(0): {end['trimmed_kb'] / 1024:.1f} MB "
          "(what the allocator kept for reuse is handed back; the rest is held)")  # fmt: skip


def print_memory(when: str, stats: dict[str, int], soak: Soak) -> None:
    calls = sum(soak.by_status.values())
    print(f"{when}: {calls} calls, RSS {stats['rss_kb'] / 1024:.1f} MB, malloc in use "
          f"{stats['malloc_kb'] / 1024:.1f} MB, Python blocks {stats['py_blocks']}",
          flush=True)  # fmt: skip


async def idle_callers(
    stub: control_pb2_grpc.ControlServiceStub, lane: str, n: int, soak: Soak
) -> None:
    """100 callers attach to one call and stop reading for 2 s, then cancel: the service must
    refuse those past its bound, keep serving, and leave nothing open."""
    t = Duration(seconds=CALL_TIMEOUT_S)
    request = pb.PauseRequest(request_id=f"idle-{n}", engines=[lane], timeout=t)
    calls = [stub.Pause(request, timeout=CALL_TIMEOUT_S + CLIENT_MARGIN_S) for _ in range(100)]
    await asyncio.sleep(2.0)
    for call in calls:
        if call.done():
            soak.by_status[f"idle-reader:{(await call.code()).name}"] += 1
        else:
            call.cancel()
            soak.by_status["idle-reader:CANCELLED(client)"] += 1


async def chaos(args: argparse.Namespace) -> int:
    from bench.chaos import FAULTS, Keys, inject, start_stub

    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    keys = Keys(tmp)
    stubs = [start_stub(f"ipc://{tmp}/engine-{i}.sock", keys) for i in range(ENGINES)]
    curve = ["--curve", str(keys.engine_public), str(keys.service_secret)]
    service = await SoakService.start([*curve, *[s.endpoint for s in stubs]], timeout=30)
    rng = random.Random(13)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            soak = Soak(stub, stubs)
            start = await service.stats()
            started = time.perf_counter()
            deadline = started + args.minutes * 60
            counter = itertools.count()
            lanes = [f"s{e}l{i}" for i in range(LINKS_PER_ENGINE) for e in range(ENGINES)]

            async def worker(w: int) -> None:
                while time.perf_counter() < deadline:
                    await soak.call(next(counter), lanes[w % len(lanes)])

            async def faults() -> None:
                round_ = 0
                while time.perf_counter() < deadline - 5:
                    fault = FAULTS[round_ % len(FAULTS)]
                    round_ += 1
                    await asyncio.to_thread(inject, fault, stubs, rng.randrange(ENGINES), keys)
                    soak.injected[fault] += 1
                    await asyncio.sleep(2.0)

            async def stop_reading() -> None:
                while time.perf_counter() < deadline - 5:
                    await idle_callers(stub, rng.choice(lanes), next(counter), soak)
                    soak.injected["idle-callers"] += 1
                    await asyncio.sleep(3.0)

            async def memory() -> None:
                """A line a minute: where the memory goes, after the warm-up as well as at it."""
                minute = 0
                while time.perf_counter() < deadline - 60:
                    await asyncio.sleep(60)
                    minute += 1
                    print_memory(f"minute {minute}", await service.stats(), soak)

            await asyncio.gather(
                *(worker(w) for w in range(args.workers)), faults(), stop_reading(), memory()
            )
            elapsed = time.perf_counter() - started
            end = await service.settled(15)
    finally:
        await service.close()
        for engine in stubs:
            engine.__exit__(None, None, None)
    total = sum(soak.by_status.values())
    print(f"chaos soak: {total} calls in {elapsed:.0f}s ({total / elapsed:.0f}/s), "
          f"{args.workers} workers, {ENGINES} engines x {LINKS_PER_ENGINE} links over CURVE, "
          f"nproc={os.cpu_count()}")  # fmt: skip
    print("calls by kind:final status")
    for key, count in sorted(soak.by_status.items()):
        print(f"  {key:<40} {count:>7}")
    print(f"faults injected: {dict(sorted(soak.injected.items()))}")
    print(f"calls without a final status: {soak.lost} {soak.lost_details[:10]}")
    print(f"calls the service ended only after the client's margin: {len(soak.late)} "
          f"(seconds: {sorted(soak.late)[-10:]})")  # fmt: skip
    print(f"open slots at the end: {end['open_slots']} (operations running: {end['running']})")
    print(
        f"link recoveries: {end['recreated'] - start['recreated']} fresh sockets after "
        f"protocol errors, {end['disconnects'] - start['disconnects']} disconnects in all"
    )
    print(f"late/unmatched replies dropped: {end['unmatched']}, malformed frames: "
          f"{end['malformed']}")  # fmt: skip
    print(f"service RSS: {start['rss_kb'] / 1024:.1f} MB at the start, "
          f"{end['rss_kb'] / 1024:.1f} MB at the end, {end['trimmed_kb'] / 1024:.1f} MB after "
          "malloc_trim(0) (what the allocator kept for reuse handed back)")  # fmt: skip
    ok = soak.lost == 0 and end["open_slots"] == 0 and end["running"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        run(serve(sys.argv[2:]))  # the loop `serve` runs on (uvloop where installed)
        sys.exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--chaos", action="store_true", help="engine faults for --minutes")
    parser.add_argument("--minutes", type=float, default=10.0, help="--chaos: how long")
    parsed = parser.parse_args()
    sys.exit(asyncio.run(chaos(parsed) if parsed.chaos else main(parsed)))
