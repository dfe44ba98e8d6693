"""The bridge against its floors, in one run, each party in its own process, on loopback.

    .venv/bin/python -m bench.run            # full run (about 2-3 minutes on 2 cores)
    .venv/bin/python -m bench.run --quick    # smoke run (every row, small counts)

Rows: floor A (a raw grpc.aio server-streaming echo of one 128-byte message), floor B (a raw
pyzmq DEALER/ROUTER echo of 128 bytes), the bridge (Pause through the service to an
instant-reply engine_stub) with 1 and 64 calls in flight, the ratios the targets are stated in,
the service's RSS after warm-up and after 100,000 calls, lost replies and open slots, and Pause
fanned out to 1, 8 and 64 engines. The table also goes to docs/benchmarks.md (unless --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402

from control_service.gen.control.v1 import control_pb2 as pb  # noqa: E402
from control_service.gen.control.v1 import control_pb2_grpc  # noqa: E402
from tests.stub_process import StubProcess  # noqa: E402

PAYLOAD = "x" * 128


# --------------------------------------------------------------------------- child processes


class EchoServicer(control_pb2_grpc.ControlServiceServicer):
    async def Pause(self, request: pb.PauseRequest, context: object):  # type: ignore[override]
        yield pb.ControlEvent(request_id=request.request_id, engine=PAYLOAD)


async def role_grpc_echo() -> None:
    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    await server.wait_for_termination()


def role_zmq_echo() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(json.dumps({"endpoint": f"tcp://127.0.0.1:{port}"}), flush=True)
    while True:
        sock.send_multipart(sock.recv_multipart())


async def role_service(endpoints: list[str], links_per_engine: int) -> None:
    from control_service.config import EngineConfig, ServiceConfig
    from control_service.log import configure
    from control_service.server import ControlServer

    configure("error")
    engines = tuple(
        EngineConfig(f"e{i}l{j}", ep) for i, ep in enumerate(endpoints)
        for j in range(links_per_engine)
    )  # fmt: skip
    server = ControlServer(ServiceConfig(engines=engines, listen="127.0.0.1:0"))
    port = await server.start()
    assert await server.wait_engines_up(30)
    print(json.dumps({"port": port, "engines": [e.name for e in engines]}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        links = server.links.values()
        print(json.dumps({
            "rss_kb": rss_kb(),
            "open_slots": server.open_slots,
            "unmatched": sum(link.slots.counters.unmatched for link in links),
        }), flush=True)  # fmt: skip


def rss_kb() -> int:
    """This process's resident set size, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


class Child:
    """A child process of this script in some role, with its first JSON line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--role", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


# -------------------------------------------------------------------------------- measuring


@dataclass
class Row:
    name: str
    p50_us: float | None = None
    p99_us: float | None = None
    rate: float | None = None
    note: str = ""


Problems = collections.Counter[str]


async def measure(
    call: Callable[[int], Awaitable[str | None]], count: int, inflight: int
) -> tuple[float, float, float, Problems]:
    """p50, p99 (us), calls/s of `count` calls with `inflight` at a time, and what went wrong:
    'lost' (no outcome at all) or the failed calls' status names. Worker w passes w to `call`."""
    latencies: list[float] = []
    problems: Problems = collections.Counter()
    counter = iter(range(count))

    async def worker(w: int) -> None:
        for _ in counter:
            t = time.perf_counter()
            problem = await call(w)
            latencies.append(time.perf_counter() - t)
            if problem:
                problems[problem] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1e6, q[98] * 1e6, count / elapsed, problems


def grpc_caller(stub: control_pb2_grpc.ControlServiceStub, engines: list[str] | None = None):
    """A Pause consumed to its end, each worker on its own engine (one mutation per engine).
    None when it ended OK with its Result; 'lost' when no outcome came; else the status name."""

    async def call(w: int) -> str | None:
        targets = [engines[w % len(engines)]] if engines else []
        started = time.perf_counter()
        try:
            events = [e async for e in stub.Pause(pb.PauseRequest(engines=targets), timeout=30)]
        except grpc.aio.AioRpcError as err:
            timed_out = time.perf_counter() - started >= 29
            return "lost" if timed_out else err.code().name
        ok = bool(events) and (events[-1].HasField("result") or events[-1].engine == PAYLOAD)
        return None if ok else "lost"

    return call


async def floor_a(n1: int, n64: int) -> tuple[Row, Row]:
    child = Child("grpc-echo")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{child.info['port']}") as ch:
            call = grpc_caller(control_pb2_grpc.ControlServiceStub(ch))
            await measure(call, 500, 1)
            p50, p99, rate, _ = await measure(call, n1, 1)
            _, _, rate64, _ = await measure(call, n64, 64)
    finally:
        child.stop()
    return Row("floor A: grpc.aio stream echo, 1 in flight", p50, p99, rate), Row(
        "floor A: grpc.aio stream echo, 64 in flight", rate=rate64
    )


async def floor_b(n1: int) -> Row:
    child = Child("zmq-echo")
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(child.info["endpoint"])
    body = PAYLOAD.encode()

    async def call(w: int) -> str | None:
        await sock.send_multipart([b"", body])
        return None if (await sock.recv_multipart())[1] == body else "lost"

    try:
        await measure(call, 500, 1)
        p50, p99, rate, _ = await measure(call, n1, 1)
    finally:
        sock.close()
        ctx.term()
        child.stop()
    return Row("floor B: pyzmq DEALER/ROUTER echo, 1 in flight", p50, p99, rate)


async def bridge(n1: int, n64: int, soak: int, warmup: int) -> tuple[list[Row], dict]:
    engine = StubProcess()
    engine.start("--instant")
    service = Child("service", "1", "64", engine.endpoint)
    names = service.info["engines"]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.info['port']}") as ch:
            stub = control_pb2_grpc.ControlServiceStub(ch)
            # Warm up both patterns measured below: 64 in flight sets the high-water mark of
            # the service's buffers, which is not growth.
            await measure(grpc_caller(stub, names[:1]), warmup, 1)
            await measure(grpc_caller(stub, names), warmup, 64)
            warm = service.ask()
            p50, p99, rate, problems = await measure(grpc_caller(stub, names[:1]), n1, 1)
            p50_64, p99_64, rate64, more = await measure(grpc_caller(stub, names), n64, 64)
            problems += more
            _, _, _, more = await measure(grpc_caller(stub, names), soak, 64)
            problems += more
            end = service.ask()
    finally:
        service.stop()
        engine.__exit__(None, None, None)
    rows = [
        Row("bridge: Pause via service to instant engine, 1 in flight", p50, p99, rate),
        Row("bridge: Pause via service, 64 in flight (64 engine links)", p50_64, p99_64, rate64),
    ]
    memory = {
        "warm_mb": warm["rss_kb"] / 1024,
        "end_mb": end["rss_kb"] / 1024,
        "calls": 2 * warmup + n1 + n64 + soak,
        "after_warmup_calls": n1 + n64 + soak,
        "lost": problems.pop("lost", 0),
        "failed": dict(problems),
        "open_slots": end["open_slots"],
        "unmatched": end["unmatched"],
    }
    return rows, memory


async def fanout(count: int) -> list[Row]:
    """Pause fanned out to 1, 8 and 64 engines: 8 instant engine processes, 8 links each at 64."""
    engines = [StubProcess() for _ in range(8)]
    for engine in engines:
        engine.start("--instant")
    rows = []
    try:
        for n, (procs, links) in {1: (1, 1), 8: (8, 1), 64: (8, 8)}.items():
            service = Child("service", "0", str(links), *[e.endpoint for e in engines[:procs]])
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{service.info['port']}") as ch:
                    call = grpc_caller(control_pb2_grpc.ControlServiceStub(ch))
                    await measure(call, max(count // 10, 20), 1)
                    p50, p99, rate, problems = await measure(call, count, 1)
            finally:
                service.stop()
            note = f"{procs} engine process(es) x {links} link(s)"
            note += f", problems {dict(problems)}" if problems else ""
            rows.append(Row(f"fan-out: Pause to {n} engine(s), 1 in flight", p50, p99, rate, note))
    finally:
        for engine in engines:
            engine.__exit__(None, None, None)
    return rows


# ------------------------------------------------------------------------------- reporting


def table(rows: list[Row], lines: list[str]) -> str:
    def fmt(v: float | None, unit: str = "") -> str:
        return "—" if v is None else f"{v:,.0f}{unit}"

    out = ["| case | p50 | p99 | calls/s | note |", "|---|---|---|---|---|"]
    out += [f"| {r.name} | {fmt(r.p50_us, ' us')} | {fmt(r.p99_us, ' us')} | {fmt(r.rate)} | {r.note} |"
            for r in rows]  # fmt: skip
    return "\n".join([*out, "", *lines])


def verdicts(
    a1: Row, a64: Row, b: Row, br1: Row, br64: Row, mem: dict, fan: list[Row]
) -> list[str]:
    assert a1.p50_us and a1.p99_us and b.p50_us and b.p99_us and br1.p50_us and br1.p99_us
    p50_ratio = br1.p50_us / (a1.p50_us + b.p50_us)
    p99_ratio = br1.p99_us / (a1.p99_us + b.p99_us)
    rate_ratio = (br64.rate or 0) / (a64.rate or 1)
    growth = mem["end_mb"] - mem["warm_mb"]

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [
        f"- p50 ratio bridge / (A + B) = **{p50_ratio:.2f}** (target <= 1.15: {mark(p50_ratio <= 1.15)})",
        f"- p99 ratio bridge / (A + B) = **{p99_ratio:.2f}** (target <= 1.5: {mark(p99_ratio <= 1.5)})",
        f"- calls/s at 64 in flight, bridge / A = **{rate_ratio:.0%}** (target >= 70%: {mark(rate_ratio >= 0.7)})",
        f"- lost replies: **{mem['lost']}**, open slots at the end: **{mem['open_slots']}**, "
        f"late/unmatched replies: {mem['unmatched']}, failed calls: {mem['failed'] or 0} ({mark(mem['lost'] == 0 and mem['open_slots'] == 0)})",
        f"- service RSS: {mem['warm_mb']:.1f} MB after warm-up, {mem['end_mb']:.1f} MB after "
        f"{mem['after_warmup_calls']:,} more calls: growth **{growth:+.2f} MB** (target < 5 MB: {mark(growth < 5)})",
    ]  # fmt: skip
    if len(fan) == 3 and fan[0].p50_us and fan[2].p50_us:
        x = fan[2].p50_us / fan[0].p50_us
        lines.append(
            f"- fan-out: 64 engines cost **{x:.1f}x** the p50 of one (target <= 3x: {mark(x <= 3)})"
        )
    return lines


def environment() -> list[str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in
                         ("grpcio", "pyzmq", "protobuf", "orjson", "uvloop") if _installed(p))  # fmt: skip
    return [f"- date: {datetime.date.today()}, nproc: {os.cpu_count()}, CPU: {cpu}",
            f"- Python {platform.python_version()}, {versions}, libzmq {zmq.zmq_version()}"]  # fmt: skip


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True


async def main(args: argparse.Namespace) -> int:
    q = args.quick
    n1, n64 = (300, 2000) if q else (5000, 20000)
    soak, warmup = (2000, 500) if q else (100_000 - n1 - n64, 5000)
    a1, a64 = await floor_a(n1, n64)
    b = await floor_b(n1)
    (br1, br64), mem = await bridge(n1, n64, soak, warmup)
    fan = await fanout(100 if q else 1000)
    rows = [a1, a64, b, br1, br64, *fan]
    text = table(rows, [*verdicts(a1, a64, b, br1, br64, mem, fan), "", *environment()])
    print(text)
    if not q:
        doc = REPO / "docs" / "benchmarks.md"
        doc.write_text(
            "# Benchmarks\n\nThe last run of `.venv/bin/python -m bench.run` (each party in its own "
            "process, loopback, 128-byte payloads; floors measured in the same run).\n\n"
            + text
            + "\n"
        )
    return 0 if mem["lost"] == 0 and mem["open_slots"] == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        from control_service.aio import run

        role = sys.argv[2]
        if role == "grpc-echo":
            run(role_grpc_echo())
        elif role == "zmq-echo":
            role_zmq_echo()
        else:
            run(role_service(sys.argv[5:], int(sys.argv[4])))
        sys.exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    sys.exit(asyncio.run(main(parser.parse_args())))
