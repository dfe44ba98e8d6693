"""A real ZMQ ROUTER in a thread whose replies a test scripts: for engine behaviour that
engine_stub has no knob for (an oversize frame, a malformed reply, a flood of progress).

    with ScriptedEngine(lambda request: [wire.encode_reply(...)]) as engine:
        ... engine.endpoint ...
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import zmq

from control_service.protocol import wire

Script = Callable[[wire.Request], Iterable[bytes]]


def healthy(request: wire.Request) -> list[bytes]:
    """What a healthy instant engine answers: a result with the state the method leads to."""
    if request.method == "cancel":
        return []
    state = wire.state(request.method == "pause", "v1", 0)
    return [wire.encode_reply(wire.result(request.request_id, state))]


class ScriptedEngine:
    """Binds a random loopback port; each request's reply bodies come from `script`."""

    def __init__(self, script: Script = healthy) -> None:
        self.script = script
        self.requests: list[wire.Request] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)  # a flood is the test's intent: never drop it
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            if not sock.poll(20):
                continue
            identity, _, body = sock.recv_multipart()
            request = wire.decode_request(body)
            self.requests.append(request)
            for reply in self.script(request):
                if self._stop.is_set():
                    return
                sock.send_multipart([identity, b"", reply])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> ScriptedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
