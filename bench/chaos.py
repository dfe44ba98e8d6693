"""The engine-side faults of `python -m bench.soak --chaos`: each takes one engine's endpoint
for a moment and gives it back healthy, so the service must recover by itself every time.

- kill: SIGKILL the engine, restart it on the same endpoint;
- stop: SIGSTOP it for 1.5 s (heartbeats time out), then SIGCONT;
- oversize: a peer on the endpoint answers with one frame over the transport cap (64 MiB);
- rotate: the engine restarts with an allow-list that lacks the service's CURVE key (every
  handshake refused), then restarts with the right one;
- flood: a peer on the endpoint streams progress at 5,000 frames/s for each call.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import zmq
import zmq.auth

from control_service.protocol import wire
from tests.stub_process import StubProcess

FAULTS = ("kill", "stop", "oversize", "rotate", "flood")
_OVERSIZE = (64 << 20) + 1


class Keys:
    """CURVE keys: the engines' pair, the service's pair, and two allow-lists (with and without
    the service's public key)."""

    def __init__(self, folder: Path) -> None:
        for name in ("engine", "service", "allowed", "refused"):
            (folder / name).mkdir()
        zmq.auth.create_certificates(folder / "engine", "engine")
        zmq.auth.create_certificates(folder / "service", "service")
        zmq.auth.create_certificates(folder / "refused", "someone-else")
        (folder / "allowed" / "service.key").write_bytes(
            (folder / "service" / "service.key").read_bytes()
        )
        self.engine_public = folder / "engine" / "engine.key"
        self.engine_secret = folder / "engine" / "engine.key_secret"
        self.service_secret = folder / "service" / "service.key_secret"
        self.allowed = folder / "allowed"
        self.refused = folder / "refused"

    def stub_args(self, refuse: bool = False) -> list[str]:
        allowed = self.refused if refuse else self.allowed
        return ["--curve-secret-key", str(self.engine_secret),
                "--curve-allowed-clients", str(allowed)]  # fmt: skip


def start_stub(endpoint: str, keys: Keys, refuse: bool = False) -> StubProcess:
    """An engine on `endpoint`. Generous: on a saturated shared machine a Python process can
    take tens of seconds to start, and a fault must always end with its engine back."""
    for attempt in range(3):
        stub = StubProcess()
        try:
            stub.start("--instant", "--bind", endpoint, *keys.stub_args(refuse), timeout=60)
        except AssertionError:  # StubError: not ready in time; stop it and try again
            stub.__exit__(None, None, None)
            if attempt == 2:
                raise
            continue
        return stub
    raise AssertionError("unreachable")


class BadPeer:
    """A CURVE ROUTER on an engine's endpoint, in a thread: 'oversize' or 'flood'."""

    def __init__(self, endpoint: str, keys: Keys, mode: str) -> None:
        self.mode = mode
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        public, secret = zmq.auth.load_certificate(keys.engine_secret)
        self._sock.curve_publickey, self._sock.curve_secretkey = public, secret
        self._sock.curve_server = True
        self._sock.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            identity, _, body = self._sock.recv_multipart()
            try:
                request = wire.decode_request(body)
            except wire.WireError:
                continue
            if request.method == "cancel":
                continue
            if self.mode == "oversize":
                self._sock.send_multipart([identity, b"", b" " * _OVERSIZE])
                continue
            rid = request.request_id
            ends = time.monotonic() + 0.5
            done = 0
            while time.monotonic() < ends and not self._stop.is_set():
                for _ in range(50):
                    done += 1
                    frame = wire.encode_reply(wire.progress(rid, "flood", done, 0))
                    self._sock.send_multipart([identity, b"", frame])
                time.sleep(0.01)
            state = wire.state(request.method == "pause", "flood", 0)
            self._sock.send_multipart([identity, b"", wire.encode_reply(wire.result(rid, state))])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close(linger=0)
        self._ctx.term()


def inject(fault: str, stubs: list[StubProcess], index: int, keys: Keys) -> None:
    """One fault on engine `index`, ending with a healthy engine on the same endpoint (blocking:
    run it in a thread)."""
    stub = stubs[index]
    endpoint = stub.endpoint
    if fault == "stop":
        stub.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        stub.send_signal(signal.SIGCONT)
        return
    stub.kill()
    if fault == "kill":
        stubs[index] = start_stub(endpoint, keys)
        return
    if fault == "rotate":
        wrong = start_stub(endpoint, keys, refuse=True)
        time.sleep(1.5)
        wrong.kill()
    else:  # oversize, flood
        peer = BadPeer(endpoint, keys, fault)
        time.sleep(2.0)
        peer.close()
    stubs[index] = start_stub(endpoint, keys)
