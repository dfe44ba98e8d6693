"""The measured cases: floors A and B against the bridge (with its RSS run), and the fan-out.

Floors and bridge run interleaved: every server is started first (each in its own process), then
`rounds` rounds each measure floor A, floor B, the naive bridge and the bridge at 1 in flight,
then floor A, the naive bridge and the bridge at 64 in flight (odd rounds in reverse order),
and each row pools its rounds. Noise from the machine (other work on the same cores) then lands
on floors and bridge alike instead of on whichever ran during it.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import zmq
import zmq.asyncio

from bench import profile
from bench.floors import ECHO_METHOD, PAYLOAD
from bench.load import Call, Pids, Stats, measure, stream_call
from bench.procs import BenchError, Child, Children
from bench.report import FanoutResult, MainResult, Row, ServiceRun, say
from control_service.gen.control.v1 import control_pb2 as pb

PAUSE_METHOD = "/control.v1.ControlService/Pause"
FANOUT_PROCESSES = 8
RSS_STEPS = 4

FLOOR_A = "floor A: grpc.aio server-stream echo, 128 B"
FLOOR_B = "floor B: pyzmq DEALER/ROUTER echo, 128 B"
BRIDGE = "bridge: Pause via service to instant engine"
NAIVE = "reference: naive bridge (bench/naive.py) to floor B's echo"
CASES = {
    "a1": FLOOR_A, "b1": FLOOR_B, "naive1": NAIVE, "bridge1": BRIDGE,
    "a64": FLOOR_A, "naive64": NAIVE, "bridge64": BRIDGE,
}  # fmt: skip


@dataclass(frozen=True)
class Counts:
    calls: int  # measured at 1 in flight: floors A and B, the bridge (over all rounds)
    calls_inflight: int  # measured at `inflight`: floor A, the bridge (over all rounds)
    warmup: int  # bridge calls before the RSS baseline (a tenth at 1, the rest at `inflight`)
    rss_calls: int  # bridge calls after the baseline, the measured ones included
    fanout_calls: int  # per fan-out width
    rounds: int = 5
    inflight: int = 64


Lost = collections.Counter[str]


def note(stats: Stats) -> str:
    return f"{stats.lost} failed: {dict(stats.problems)}" if stats.lost else ""


# ---------------------------------------------------------------------------------- clients


@contextlib.asynccontextmanager
async def channel(port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        await ch.channel_ready()
        yield ch


def echo_call(ch: grpc.aio.Channel) -> Call:
    """Floor A: 128 bytes in, the same 128 bytes back as the stream's one message."""
    return stream_call(ch.unary_stream(ECHO_METHOD), [PAYLOAD], lambda msgs: msgs == [PAYLOAD])


@contextlib.contextmanager
def zmq_echo_call(endpoint: str) -> Iterator[Call]:
    """Floor B: a DEALER sends [b"", 128 bytes] (the engine protocol's envelope), the ROUTER
    echoes them. No per-call timeout (it would cost a task per call): `measure` bounds the run."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    frames = (b"", PAYLOAD)

    async def call(w: int) -> str | None:
        await sock.send_multipart(frames)
        reply = await sock.recv_multipart()
        return None if reply[-1] == PAYLOAD else "wrong reply"

    try:
        yield call
    finally:
        sock.close(linger=0)
        ctx.term()


def pause_calls(ch: grpc.aio.Channel, targets: list[list[str]], engines: int) -> Call:
    """Pause, worker w asking targets[w % len(targets)]; good when the stream ended OK with one
    Result from each of the `engines` engines asked."""
    pause = ch.unary_stream(
        PAUSE_METHOD,
        request_serializer=pb.PauseRequest.SerializeToString,
        response_deserializer=pb.ControlEvent.FromString,
    )

    def check(events: list[Any]) -> bool:
        return bool(events) and events[-1].HasField("result") and sum(
            1 for e in events if e.HasField("result")) == engines  # fmt: skip

    return stream_call(pause, [pb.PauseRequest(engines=names) for names in targets], check)


# ------------------------------------------------------------------------ floors and bridge


@dataclass(frozen=True)
class Step:
    """One row's share of a round: `total` calls over all rounds, `inflight` at a time."""

    key: str  # "a1", "b1", "bridge1", "a64", "bridge64"
    call: Call
    total: int
    inflight: int
    cpu_of: dict[str, Pids]  # role -> the processes whose CPU time to count


async def floors_and_bridge(
    children: Children, n: Counts, profile_out: Path | None = None
) -> MainResult:
    """Floor A's echo server, floor B's ROUTER echo, one instant engine, the service (engine
    entries l0..l63, all on that engine: worker w always asks l<w>, as one engine runs one
    mutation at a time) and the naive bridge (the same entries, on floor B's echo), each in its
    own process; warm-up; the service's RSS baseline; the
    interleaved rounds; the rest of the RSS run (the bridge at 64 in flight); the service's own
    account of itself (open slots, counters, RSS) as it stops."""
    grpc_echo = children.spawn("bench.floors", "grpc")
    zmq_echo = children.spawn("bench.floors", "zmq")
    engine = children.spawn("bench._engine")
    for child in (grpc_echo, zmq_echo, engine):
        child.ready()
    entries = [f"l{i}={engine.info['endpoint']}" for i in range(n.inflight)]
    service = children.start("bench._service", *entries)
    echo_entries = [f"l{i}={zmq_echo.info['endpoint']}" for i in range(n.inflight)]
    naive = children.start("bench.naive", *echo_entries)
    lost: Lost = collections.Counter()
    try:
        async with (
            channel(grpc_echo.info["port"]) as a_ch,
            channel(service.info["port"]) as s_ch,
            channel(naive.info["port"]) as n_ch,
        ):
            with zmq_echo_call(zmq_echo.info["endpoint"]) as b1:
                names = service.info["engines"]
                a_cpu: dict[str, Pids] = {"client": ("self",), "server": (grpc_echo.proc.pid,)}
                b_cpu: dict[str, Pids] = {"client": ("self",), "server": (zmq_echo.proc.pid,)}
                s_cpu: dict[str, Pids] = {
                    "client": ("self",), "server": (service.info["pid"],), "engine": (engine.proc.pid,)
                }  # fmt: skip
                n_cpu: dict[str, Pids] = {
                    "client": ("self",), "server": (naive.info["pid"],), "engine": (zmq_echo.proc.pid,)
                }  # fmt: skip
                a = echo_call(a_ch)
                naive1 = pause_calls(n_ch, [names[:1]], 1)
                naive64 = pause_calls(n_ch, [[name] for name in names], 1)
                bridge1 = pause_calls(s_ch, [names[:1]], 1)
                bridge64 = pause_calls(s_ch, [[name] for name in names], 1)
                plan = [
                    Step("a1", a, n.calls, 1, a_cpu),
                    Step("b1", b1, n.calls, 1, b_cpu),
                    Step("naive1", naive1, n.calls, 1, n_cpu),
                    Step("bridge1", bridge1, n.calls, 1, s_cpu),
                    Step("a64", a, n.calls_inflight, n.inflight, a_cpu),
                    Step("naive64", naive64, n.calls_inflight, n.inflight, n_cpu),
                    Step("bridge64", bridge64, n.calls_inflight, n.inflight, s_cpu),
                ]
                say(f"  warm-up ({n.warmup:,} bridge calls)")
                await _warm_up(plan, n.warmup, lost)
                rss = [service.ask("stats")["rss_kb"]]
                per_round = [await _round(plan, r, n.rounds, lost) for r in range(n.rounds)]
            children.stop(naive)
            children.stop(grpc_echo)
            children.stop(zmq_echo)
            rss.append(service.ask("stats")["rss_kb"])
            measured = sum(got[k].count for got in per_round for k in ("bridge1", "bridge64"))
            rest = max(n.rss_calls - measured, 0)
            say(f"  RSS run: {rest:,} more bridge calls at {n.inflight} in flight")
            with _maybe_profile(service, profile_out):
                for part in range(RSS_STEPS):  # RSS after each step: a leak climbs, a peak does not
                    count = rest // RSS_STEPS + (rest % RSS_STEPS if part == 0 else 0)
                    lost.update((await measure(bridge64, count, n.inflight)).problems)
                    rss.append(service.ask("stats")["rss_kb"])
        end = stop_service(children, service)
    finally:  # the service first, so that it sees no engine go away
        children.stop(service)
        children.stop(engine)
    rows = {}
    for key, name in CASES.items():
        stats = Stats.merge([got[key] for got in per_round])
        rows[key] = Row(name, stats, note(stats))
    for key in ("bridge64", "naive64"):
        rows[key].note = f"{n.inflight} engine entries on 1 engine process; " + rows[key].note
    return MainResult(rows, per_round, ServiceRun(rss, end, measured + rest), lost)


async def _warm_up(plan: list[Step], bridge_calls: int, lost: Lost) -> None:
    """Every step once. The bridge gets a tenth of `bridge_calls` at 1 in flight and the rest
    at 64, which is what fills the service's allocators: its RSS climbs over the first ~20,000
    calls, then flattens (the RSS steps in the report show it). The floors get a tenth each."""
    for step in plan:
        if step.key == "bridge1":
            lost.update((await measure(step.call, bridge_calls // 10, 1)).problems)
        elif step.key == "bridge64":
            count = bridge_calls - bridge_calls // 10
            lost.update((await measure(step.call, count, step.inflight)).problems)
        else:
            await measure(step.call, max(bridge_calls // 10, 50), step.inflight)


async def _round(plan: list[Step], r: int, rounds: int, lost: Lost) -> dict[str, Stats]:
    """Every row once; odd rounds run the rows in reverse order. On this machine a row measured
    right after another saturating row runs slower (the CPU the VM is given drops under sustained
    load), so a fixed order put the same rows last every round and biased their ratios: with
    the order alternated each row is measured early and late equally often."""
    say(f"  round {r + 1}/{rounds}")
    got = {}
    for step in plan if r % 2 == 0 else plan[::-1]:
        got[step.key] = await measure(step.call, step.total // rounds, step.inflight, step.cpu_of)
    lost.update(got["bridge1"].problems + got["bridge64"].problems)
    return got


def _maybe_profile(service: Child, out: Path | None) -> contextlib.AbstractContextManager[None]:
    if out is None:
        return contextlib.nullcontext()
    say(f"  (profiling the service with py-spy into {out})")
    return profile.sampling(service.info["pid"], out)


def stop_service(children: Children, service: Child) -> dict:
    """Ask the service to stop; its answer holds its stats from just before stopping."""
    try:
        end = service.ask("stop")
    finally:
        children.stop(service)
    if "error" in end:
        raise BenchError(f"service: {end['error']}")
    return end


# ----------------------------------------------------------------------------------- fan-out


async def fanout(children: Children, n: Counts) -> FanoutResult:
    """Pause fanned out to 1, 8 and 64 engines, 1 in flight, through one service with 64
    engine entries on 8 instant engine processes (8 entries each): 1 = one entry; 8 = one entry
    on each process; 64 = every entry (an empty `engines`, i.e. all)."""
    engines = [children.spawn("bench._engine") for _ in range(FANOUT_PROCESSES)]
    for engine in engines:
        engine.ready()
    per = 64 // FANOUT_PROCESSES
    entries = [
        f"e{p}.{j}={engines[p].info['endpoint']}"
        for p in range(FANOUT_PROCESSES)
        for j in range(per)
    ]
    service = children.start("bench._service", *entries)
    widths: dict[int, tuple[list[str], str]] = {
        1: (["e0.0"], "1 entry"),
        8: (
            [f"e{p}.0" for p in range(FANOUT_PROCESSES)],
            f"1 entry on each of {FANOUT_PROCESSES} engine processes",
        ),
        64: ([], f"all 64 entries, {per} on each of {FANOUT_PROCESSES} engine processes"),
    }
    rows: list[Row] = []
    lost: Lost = collections.Counter()
    cpu: dict[str, Pids] = {
        "client": ("self",), "server": (service.info["pid"],),
        "engine": tuple(engine.proc.pid for engine in engines),
    }  # fmt: skip
    try:
        async with channel(service.info["port"]) as ch:
            for width, (names, layout) in widths.items():
                say(f"  fan-out to {width}: {n.fanout_calls:,} calls")
                call = pause_calls(ch, [names], width)
                warm = await measure(call, max(n.fanout_calls // 10, 20), 1)
                stats = await measure(call, n.fanout_calls, 1, cpu)
                lost.update(warm.problems + stats.problems)
                label = "engine" if width == 1 else "engines"
                rows.append(
                    Row(f"fan-out: Pause to {width} {label}", stats, f"{layout}; " + note(stats))
                )
        end = stop_service(children, service)
    finally:
        children.stop(service)
        for engine in engines:
            children.stop(engine)
    return FanoutResult(rows, end, lost)
