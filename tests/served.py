"""A `control-service serve` process as a user starts it, seen from outside: wait until it serves,
tell which event loop it runs on, stop it and see that it and its engines are gone."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "control.v1.ControlService"


def wait_serving(
    target: str, timeout: float = 60.0, alive: Callable[[], bool] = lambda: True
) -> None:
    """Block until the health service says SERVING for the control service (engines up): the
    Watch stream pushes each change, so this waits on the event itself, bounded by `timeout`.
    `alive` is asked between connection attempts, so a service that died fails this at once."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        ready = grpc.channel_ready_future(channel)
        while True:
            assert alive(), f"the service for {target} exited before it served"
            try:
                ready.result(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
                break
            except grpc.FutureTimeoutError:
                assert time.monotonic() < deadline, f"{target} not reachable within {timeout}s"
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout)
        for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                return
    raise AssertionError(f"{target} stopped its health stream before SERVING")


def loaded_uvloop(pid: int) -> bool:
    """Whether the process has uvloop's extension mapped: `CONTROL_SERVICE_LOOP=asyncio` must
    not even import it, and `uvloop` must run on it."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "uvloop/loop." in maps


def children(pid: int) -> list[int]:
    """Direct children of `pid` (the embedded engines of a service), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, waiting for its parent


def wait_gone(pids: list[int], timeout: float = 15.0) -> None:
    """Processes we did not start directly (an engine, a service started by `bash -c ... &`)
    cannot be waited for: watch /proc, with a bound."""
    deadline = time.monotonic() + timeout
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running after {timeout}s: {pids}"
        time.sleep(0.02)


def terminate_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
