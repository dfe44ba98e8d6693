"""`control-service serve` as a real subprocess, for tests that need the service as users run it
(its CLI, its process limits, a blocking client that must not share an event loop with it).

    with ServeProcess(["--embedded-engine"], log=tmp_path / "serve.log") as service:
        ...  # service.target is "127.0.0.1:PORT"; every engine link is up

Readiness is awaited on the gRPC health service (control.v1.ControlService turns SERVING only
once every engine link is up): a bounded Watch, never a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import free_port

REPO = Path(__file__).resolve().parent.parent
SERVICE = "control.v1.ControlService"
ENV_PREFIX = "CONTROL_SERVICE_"


class ServeProcess:
    """One `python -m control_service serve` process; stopped with SIGTERM on exit."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        *,
        preexec_fn: Callable[[], None] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.args = [*args, "--listen", f"127.0.0.1:{self.port}"]
        self.log = log
        self.preexec_fn = preexec_fn
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ServeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        with self.log.open("wb") as out:  # a file, not a pipe: many engines log many lines
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "control_service", "serve", *self.args],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                preexec_fn=self.preexec_fn,  # noqa: PLW1509 (only sets a limit)
            )  # fmt: skip
        try:
            self.wait_serving(self.ready_timeout)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def wait_serving(self, timeout: float) -> None:
        """Block until health says SERVING for the service; AssertionError (with the log's
        tail) when it does not within `timeout` or the process exits first."""
        with grpc.insecure_channel(self.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout,
                wait_for_ready=True,
            )  # fmt: skip
            # A service that exits (a bad configuration) ends the wait at once, not at timeout.
            threading.Thread(target=self._cancel_on_exit, args=(watch,), daemon=True).start()
            try:
                for reply in watch:
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        watch.cancel()
                        return
            except grpc.RpcError as err:
                raise AssertionError(
                    f"service not SERVING within {timeout}s ({err.code().name}); "
                    f"exit code {self.proc and self.proc.poll()}; log:\n{self.tail()}"
                ) from None
        raise AssertionError(f"health stream ended before SERVING; log:\n{self.tail()}")

    def _cancel_on_exit(self, watch: grpc.Future) -> None:
        assert self.proc is not None
        self.proc.wait()
        watch.cancel()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the exit code (0 for a clean drain)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
