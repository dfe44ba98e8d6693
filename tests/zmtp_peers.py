"""Peers that speak just enough ZMTP to break a link in a chosen way, for link-recovery tests."""

from __future__ import annotations

import socket
import threading


class WrongMechanismPeer:
    """A TCP listener that answers with a ZMTP 3.0 greeting for another security mechanism
    (PLAIN) and then holds the connection: the DEALER itself finds the mismatch, a protocol
    error. (A real PLAIN ROUTER would race the DEALER to it and sometimes just hang up.)"""

    GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"PLAIN".ljust(20, b"\0") + b"\x01"
    GREETING += bytes(64 - len(GREETING))

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.05)
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.sendall(self.GREETING)
            self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.held:
            conn.close()
        self.listener.close()
