"""Start an engine fake (tests/fakes/engines.py) as a real process and drive its test controls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 15.0


class FakeEngine:
    """One fake engine process. `url` is its base URL once started."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0

    def start(self, *args: str, port: int = 0) -> str:
        argv = [sys.executable, "-m", "tests.fakes.engines", self.kind, "--port", str(port), *args]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                   os.environ.get("PYTHONPATH", "")])))  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=REPO, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the process prints it or exits
        if not line:
            raise AssertionError(f"fake {self.kind} exited before it was ready")
        self.port = json.loads(line)["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST" if data
                                         is not None else "GET")  # fmt: skip
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def knobs(self, **knobs: Any) -> None:
        self._call("/_fake/knobs", knobs)

    def release(self) -> None:
        self._call("/_fake/release", {})

    def log(self) -> dict[str, Any]:
        return self._call("/_fake/log")

    def mutations(self) -> list[str]:
        """The requests that change the engine, in order, as 'POST /path?query'."""
        out = []
        for r in self.log()["requests"]:
            if r["method"] == "POST":
                query = "&".join(f"{k}={v}" for k, v in sorted(r["query"].items()))
                out.append(f"POST {r['path']}" + (f"?{query}" if query else ""))
        return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Kill and check that the fake never saw a hazard (a duplicate resume)."""
        violations: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            violations = self.log()["violations"]
        self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        assert not violations, f"fake {self.kind} saw: {violations}"


class AdapterProcess:
    """`python -m control_service.adapters KIND --url URL --bind tcp://127.0.0.1:0` as a process;
    `endpoint` is its bound ROUTER once it printed its ready line."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.ready: dict[str, Any] = {}

    def start(self, kind: str, url: str, *args: str) -> str:
        argv = [sys.executable, "-m", "control_service.adapters", kind, "--url", url, *args]
        if "--bind" not in args:
            argv += ["--bind", "tcp://127.0.0.1:0"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the adapter prints it or exits
        if not line:
            raise AssertionError(f"adapter {kind} exited ({self.proc.wait(10)}) before ready")
        self.ready = json.loads(line)
        self.endpoint = self.ready["endpoint"]
        return self.endpoint

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code
