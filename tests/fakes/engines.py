"""Real HTTP servers that answer like vLLM 0.34, SGLang 0.5.23 and FastDeploy's admin APIs.

Run one per process: `python -m tests.fakes.engines vllm|sglang|fastdeploy [--port 0]`. It prints
one JSON line `{"event": "ready", "port": N}` on stdout, then serves until killed. Each fake
follows its engine's routes, field names, status codes and quirks (see docs/adapters.md):

- vLLM: control routes exist only in dev mode (404 otherwise, `--no-dev-mode`); generation answers
  503 while paused; a resume while serving is the duplicate-resume hazard (a deadlock with data
  parallelism): recorded as a violation, and that request hangs as it would there.
- SGLang: `pause_generation {"mode": "abort"}` aborts but does not pause; a load while requests are
  frozen in place with `flush_cache` on changes the weights and then reports `success: false`;
  `/get_weight_version` is gone (404); `/ready` is 503 while paused; optional Bearer key (401).
- FastDeploy: `/v1/update_weights` is refused unless paused; no version query.

Test controls live under `/_fake/` and are never logged: `POST /_fake/knobs` sets behaviours
(`hang`: a path whose next request hangs until `/_fake/release`; `fail`: `{path, status, times}`;
`fail_load`: a message; `running`: requests in flight; `drain_s`: how long a WAIT drain takes),
`GET /_fake/log` returns every other request in order (with `trace`: the traceparent and
tracestate headers it came with, if any) and the violations seen.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Reply = tuple[int, Any]  # (HTTP status, JSON body, or str for text/plain)
_HANG_LIMIT_S = 600.0


class FakeState:
    """What every fake shares: the request log, knobs and the hang gate."""

    def __init__(self, api_key: str | None = None) -> None:
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.api_key = api_key
        self.hang: str | None = None
        self.fail: dict[str, Any] | None = None
        self.fail_load: str | None = None
        self.running = 0
        self.drain_s = 0.0
        self.release = threading.Event()
        self.paused = False
        self.version = "default"

    def knobs(self, body: dict[str, Any]) -> None:
        for key, value in body.items():
            if key not in ("hang", "fail", "fail_load", "running", "drain_s"):
                raise ValueError(f"unknown knob {key!r}")
            setattr(self, key, value)
        if "hang" in body:
            self.release.clear()

    def injected(self, path: str) -> Reply | None:
        """A hang or a failure the test asked for on this path, else None."""
        if self.hang == path:
            self.hang = None
            self.release.wait(_HANG_LIMIT_S)
        fail = self.fail
        if fail is not None and fail.get("path") == path and fail.get("times", 1) > 0:
            fail["times"] = fail.get("times", 1) - 1
            return int(fail.get("status", 500)), "Internal Server Error"
        return None


class VllmFake:
    """vLLM 0.34's dev-mode RL routes (`VLLM_SERVER_DEV_MODE=1`); no auth on them."""

    CONTROL = ("/pause", "/resume", "/is_paused", "/collective_rpc", "/update_weight_version",
               "/weight_info")  # fmt: skip

    def __init__(self, state: FakeState, dev_mode: bool = True) -> None:
        self.s = state
        self.dev_mode = dev_mode
        self.model = "/models/base"

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        s = self.s
        if path in self.CONTROL and not self.dev_mode:
            return 404, {"detail": "Not Found"}
        if (method, path) == ("POST", "/pause"):
            return self._pause(query)
        if (method, path) == ("POST", "/resume"):
            if not s.paused:
                s.violations.append("resume while serving (duplicate resume: deadlocks with DP)")
                s.release.wait(_HANG_LIMIT_S)
            s.paused = False
            return 200, {"status": "resumed"}
        if (method, path) == ("GET", "/is_paused"):
            return 200, {"is_paused": s.paused}
        if (method, path) == ("POST", "/collective_rpc"):
            return self._rpc(body)
        if (method, path) == ("POST", "/update_weight_version"):
            if not isinstance(body, dict) or not isinstance(body.get("new_version"), str):
                return 422, {"detail": [{"loc": ["body", "new_version"], "msg": "Field required"}]}
            s.version = body["new_version"]
            return 200, {"success": True, "new_version": s.version}
        if (method, path) == ("GET", "/weight_info"):
            return 200, {"weight_version": s.version}
        if (method, path) == ("GET", "/metrics"):
            return 200, f'vllm:num_requests_running{{model_name="fake"}} {float(s.running)}\n'
        if (method, path) == ("POST", "/v1/completions"):
            if s.paused:
                return 503, {"error": {"message": "The engine is paused.", "code": 503}}
            return 200, {"choices": [{"text": "ok"}]}
        if (method, path) == ("GET", "/health"):
            return 200, ""
        return 404, {"detail": "Not Found"}

    def _pause(self, query: dict[str, str]) -> Reply:
        s = self.s
        mode = query.get("mode", "abort")
        if mode not in ("abort", "wait", "keep"):
            return 422, {"detail": [{"loc": ["query", "mode"], "msg": "Input should be "
                                     "'abort', 'wait' or 'keep'"}]}  # fmt: skip
        if mode == "abort":
            s.running = 0
        elif mode == "wait":
            steps = max(1, s.running)
            while s.running > 0:  # drains over drain_s, one request at a time
                time.sleep(s.drain_s / steps)
                s.running -= 1
        s.paused = True
        return 200, {"status": "paused"}

    def _rpc(self, body: Any) -> Reply:
        s = self.s
        if not isinstance(body, dict) or body.get("method") is None:
            return 400, {"detail": "Missing 'method' in request body"}
        if body["method"] != "reload_weights":
            return 200, {"results": [None]}
        if s.fail_load is not None:
            return 500, "Internal Server Error"
        self.model = body.get("kwargs", {}).get("weights_path", self.model)
        return 200, {"results": [None]}


class SglangFake:
    """SGLang 0.5.23's native admin routes, with an optional `--api-key` (Bearer)."""

    def __init__(self, state: FakeState) -> None:
        self.s = state
        self.model_path = "/models/base"
        self.mode: str | None = None  # "in_place" or "retract" while paused

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        s = self.s
        if (method, path) == ("POST", "/pause_generation"):
            mode = (body or {}).get("mode", "abort")
            if mode not in ("abort", "in_place", "retract"):
                return 400, {"object": "error", "message": f"invalid mode {mode!r}", "code": 400}
            if mode == "abort":
                s.running = 0  # aborts, but the scheduler keeps admitting: not paused
            else:
                s.paused, self.mode = True, mode
            return 200, {"message": "Generation paused successfully.", "status": "ok"}
        if (method, path) == ("POST", "/continue_generation"):
            if not s.paused:
                s.violations.append("continue_generation while serving (duplicate resume)")
            s.paused, self.mode = False, None
            return 200, {"message": "Generation continued successfully.", "status": "ok"}
        if (method, path) == ("POST", "/update_weights_from_disk"):
            return self._load(body or {})
        if (method, path) == ("GET", "/model_info"):
            return 200, {"model_path": self.model_path, "weight_version": s.version,
                         "is_generation": True}  # fmt: skip
        if (method, path) == ("GET", "/ready"):
            return (503, {"status": "paused"}) if s.paused else (200, {"status": "ready"})
        if path == "/flush_cache":
            if s.running and self.mode == "in_place":
                return 400, "Cache not flushed: requests are running or waiting.\n"
            return 200, "Cache flushed.\n"
        if (method, path) == ("GET", "/health"):
            return 200, ""
        return 404, {"detail": "Not Found"}  # /get_weight_version included: gone in 0.5.23

    def _load(self, body: dict[str, Any]) -> Reply:
        s = self.s
        if s.fail_load is not None:
            return 400, {"success": False, "message": s.fail_load, "num_paused_requests": 0}
        self.model_path = body.get("model_path", self.model_path)
        if body.get("flush_cache", True) and self.mode == "in_place" and s.running:
            # The weights changed; the flush that follows fails with requests frozen in place.
            message = "Succeeded to update model weights. Failed to flush cache."
            return 400, {"success": False, "num_paused_requests": 0, "message": message}
        version = body.get("weight_version")
        message = "Succeeded to update model weights."
        if version is not None:
            s.version = version
            message += f" Weight version updated to {version}."
        return 200, {"success": True, "message": message, "num_paused_requests": 0}


class FastDeployFake:
    """FastDeploy's V1 control routes (`--dynamic-load-weight`); no version query."""

    def __init__(self, state: FakeState) -> None:
        self.s = state
        self.version = ""

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        s = self.s
        if (method, path) == ("POST", "/v1/pause"):
            s.running, s.paused = 0, True
            return 200, {"status": "ok"}
        if (method, path) == ("POST", "/v1/resume"):
            if not s.paused:
                s.violations.append("resume while serving (duplicate resume)")
            s.paused = False
            return 200, {"status": "ok"}
        if (method, path) == ("GET", "/v1/is_paused"):
            return 200, {"is_paused": s.paused}
        if (method, path) == ("POST", "/v1/update_weights"):
            if not s.paused:
                return 400, {"error": "update_weights requires the engine to be paused"}
            if s.fail_load is not None:
                return 500, {"error": s.fail_load}
            self.version = (body or {}).get("version", "")
            return 200, {"status": "ok"}
        if (method, path) == ("GET", "/health"):
            return 200, ""
        return 404, {"detail": "Not Found"}


def make_handler(state: FakeState, engine: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real servers (uvicorn) do

        def setup(self) -> None:
            super().setup()  # headers and body go out as separate writes: no Nagle delay
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request log is the record; stderr stays quiet

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                self._send(400, {"detail": "JSON decode error"})
                return
            if url.path.startswith("/_fake/"):
                self._send(*self._control(method, url.path, body))
                return
            entry = {"method": method, "path": url.path, "query": query, "body": body}
            trace = {k: v for k in ("traceparent", "tracestate") if (v := self.headers.get(k))}
            if trace:  # the call's trace context, as the adapter passed it on
                entry["trace"] = trace
            with state.lock:
                state.log.append(entry)
            if state.api_key and not url.path.startswith(("/health", "/metrics")):
                if self.headers.get("Authorization") != f"Bearer {state.api_key}":
                    self._send(401, {"error": "Unauthorized"})
                    return
            reply = state.injected(url.path) or engine.handle(method, url.path, query, body)
            self._send(*reply)

        def _control(self, method: str, path: str, body: Any) -> Reply:
            if path == "/_fake/log":
                with state.lock:
                    return 200, {"requests": list(state.log), "violations": state.violations,
                                 "paused": state.paused, "version": state.version}  # fmt: skip
            if path == "/_fake/knobs" and method == "POST":
                try:
                    state.knobs(body or {})
                except ValueError as err:
                    return 400, {"detail": str(err)}
                return 200, {}
            if path == "/_fake/release":
                state.release.set()
                return 200, {}
            return 404, {"detail": "Not Found"}

        def _send(self, status: int, body: Any) -> None:
            if isinstance(body, str):
                data, kind = body.encode(), "text/plain; charset=utf-8"
            else:
                data, kind = json.dumps(body).encode(), "application/json"
            try:
                self.send_response(status, HTTPStatus(status).phrase)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client went away (a timeout): nothing to answer

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.engines")
    parser.add_argument("engine", choices=("vllm", "sglang", "fastdeploy"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-dev-mode", action="store_true", help="vLLM without dev routes")
    parser.add_argument("--api-key", default=None, help="SGLang's --api-key")
    args = parser.parse_args(argv)
    state = FakeState(api_key=args.api_key)
    engine: Any
    if args.engine == "vllm":
        engine = VllmFake(state, dev_mode=not args.no_dev_mode)
    elif args.engine == "sglang":
        engine = SglangFake(state)
    else:
        engine = FastDeployFake(state)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(state, engine))
    server.daemon_threads = True
    print(json.dumps({"event": "ready", "port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
