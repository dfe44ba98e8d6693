"""Each adapter as a real process between a raw engine-protocol client (ZMQ) and its engine's HTTP
fake (a real HTTP server): routes, fields and order of what reaches the engine, the state machine
(no duplicate pause or resume), HTTP outcomes as codes, timeouts, and an engine that goes away."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control_service.protocol import wire
from tests.fakes.process import AdapterProcess, FakeEngine
from tests.stub_process import EngineClient

Fake = Callable[..., FakeEngine]
Adapter = Callable[..., AdapterProcess]


@pytest.fixture
def client() -> Iterator[Callable[[str], EngineClient]]:
    clients: list[EngineClient] = []

    def connect(endpoint: str) -> EngineClient:
        clients.append(EngineClient(endpoint))
        return clients[-1]

    yield connect
    for c in clients:
        c.close()


def last(replies: list[wire.Reply]) -> wire.Reply:
    return replies[-1]


def error_of(replies: list[wire.Reply]) -> tuple[str, str]:
    reply = replies[-1]
    assert reply.kind == wire.ERROR, f"expected an error, got {reply}"
    return reply.data["code"], reply.data["message"]


PAUSE_ABORT = {"mode": "abort", "clear_cache": False}


def test_vllm_refit_steps_reach_the_engine_in_order_and_never_twice(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("vllm")
    fake.knobs(running=3)
    engine = client(start_adapter("vllm", fake.url).endpoint)

    status = engine.result("status")
    assert status.data["state"]["in_flight"] == 3, "running requests come from /metrics"
    assert status.data["capabilities"]["pause_modes"] == ["abort", "keep", "wait"]
    assert status.data["capabilities"]["cancel"] is False

    paused = engine.call("pause", PAUSE_ABORT)
    assert paused[0].kind == wire.ACCEPTED
    assert last(paused).data["aborted"] == 3
    assert engine.result("pause", PAUSE_ABORT).data["message"].startswith("already paused")
    loaded = engine.call("update_weights", {"uri": "/ckpt/7", "version": "7"})
    stages = [r.data["stage"] for r in loaded if r.kind == wire.PROGRESS]
    assert "loading" in stages and "setting_version" in stages, stages
    assert last(loaded).data["state"]["weight_version"] == "7"
    assert engine.result("resume").data["state"]["paused"] is False
    assert "nothing sent" in engine.result("resume").data["message"]

    assert fake.mutations() == [
        "POST /pause?clear_cache=false&mode=abort",
        "POST /collective_rpc",
        "POST /update_weight_version",
        "POST /resume",
    ]
    bodies = [r["body"] for r in fake.log()["requests"] if r["method"] == "POST"]
    assert bodies[1]["method"] == "reload_weights"
    assert bodies[1]["kwargs"] == {"weights_path": "/ckpt/7"}
    assert bodies[2] == {"new_version": "7"}


def test_vllm_wait_reports_the_drain_from_its_metrics(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("vllm")
    fake.knobs(running=4, drain_s=2.0)
    engine = client(start_adapter("vllm", fake.url, "--progress-interval", "0.2").endpoint)
    replies = engine.call("pause", {"mode": "wait", "clear_cache": False}, timeout=15)
    drained = [r.data for r in replies if r.kind == wire.PROGRESS and r.data["stage"] == "draining"]
    assert drained, "no draining progress while vLLM drained"
    assert all(d["total"] == 4 for d in drained)
    assert drained[-1]["done"] >= drained[0]["done"]
    assert last(replies).data["drained"] == 4
    assert fake.mutations() == ["POST /pause?clear_cache=false&mode=wait"]


def test_vllm_without_dev_mode_says_how_to_fix_it(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("vllm", "--no-dev-mode")
    engine = client(start_adapter("vllm", fake.url).endpoint)
    code, message = error_of(engine.call("pause", PAUSE_ABORT))
    assert code == "FAILED_PRECONDITION"
    assert "VLLM_SERVER_DEV_MODE=1" in message
    code, message = error_of(engine.call("status"))
    assert code == "FAILED_PRECONDITION" and "VLLM_SERVER_DEV_MODE=1" in message
    assert fake.mutations() == [], "nothing is sent while the state is unknown"


def test_sglang_abort_is_abort_then_in_place_and_keep_loads_without_flush(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("sglang")
    engine = client(start_adapter("sglang", fake.url).endpoint)
    assert engine.result("pause", PAUSE_ABORT).data["state"]["paused"] is True
    engine.result("resume")
    fake.knobs(running=2)  # requests in flight, frozen in place by KEEP
    engine.result("pause", {"mode": "keep", "clear_cache": False})
    loaded = engine.result("update_weights", {"uri": "/ckpt/2", "version": "2"})
    assert loaded.data["state"]["weight_version"] == "2"
    engine.result("resume")

    posts = [(r["path"], r["body"]) for r in fake.log()["requests"] if r["method"] == "POST"]
    assert posts == [
        ("/pause_generation", {"mode": "abort"}),
        ("/pause_generation", {"mode": "in_place"}),
        ("/continue_generation", None),
        ("/pause_generation", {"mode": "in_place"}),
        ("/update_weights_from_disk",
         {"model_path": "/ckpt/2", "weight_version": "2", "flush_cache": False}),
        ("/continue_generation", None),
    ]  # fmt: skip


def test_sglang_wait_is_not_offered(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("sglang")
    engine = client(start_adapter("sglang", fake.url).endpoint)
    assert engine.result("status").data["capabilities"]["pause_modes"] == ["abort", "keep"]
    code, _ = error_of(engine.call("pause", {"mode": "wait", "clear_cache": False}))
    assert code == "UNIMPLEMENTED"
    assert fake.mutations() == []


def test_sglang_failed_load_reports_its_message_and_the_version_reread(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("sglang")
    engine = client(start_adapter("sglang", fake.url).endpoint)
    engine.result("pause", PAUSE_ABORT)
    fake.knobs(fail_load="Failed to get weights iterator: /ckpt/bad not found")
    code, message = error_of(engine.call("update_weights", {"uri": "/ckpt/bad", "version": "9"}))
    assert code == "UNKNOWN"
    assert "/ckpt/bad not found" in message, "the engine's own words"
    assert "paused, version default" in message, "what a fresh read found"
    assert "the old weights are loaded" in message


def test_sglang_load_failing_after_the_weights_changed_says_so(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("sglang")
    engine = client(start_adapter("sglang", fake.url).endpoint)
    engine.result("pause", PAUSE_ABORT)
    fake.knobs(running=1)  # a request admitted between the abort and the freeze (a race)
    code, message = error_of(engine.call("update_weights", {"uri": "/ckpt/new", "version": "4"}))
    assert code == "UNKNOWN" and "Failed to flush cache" in message
    assert "the NEW weights are loaded" in message and "version default" in message


def test_sglang_api_key(
    fake_engine: Fake,
    start_adapter: Adapter,
    client: Callable[[str], EngineClient],
    tmp_path: Path,
) -> None:
    fake = fake_engine("sglang", "--api-key", "s3cret")
    wrong = client(start_adapter("sglang", fake.url).endpoint)
    code, _ = error_of(wrong.call("pause", PAUSE_ABORT))
    assert code == "UNAUTHENTICATED"
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    right = client(start_adapter("sglang", fake.url, "--api-key-file", str(key)).endpoint)
    assert right.result("pause", PAUSE_ABORT).data["state"]["paused"] is True


def test_fastdeploy_update_needs_a_pause_and_reports_the_version_it_set(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("fastdeploy")
    engine = client(start_adapter("fastdeploy", fake.url).endpoint)
    code, message = error_of(engine.call("update_weights", {"uri": "/ckpt/3", "version": "3"}))
    assert code == "FAILED_PRECONDITION" and "paused" in message
    assert fake.mutations() == [], "refused by the adapter, not sent for FastDeploy to refuse"
    caps = engine.result("status").data["capabilities"]
    assert caps["pause_modes"] == ["abort"] and caps["clear_cache"] is False
    code, _ = error_of(engine.call("pause", {"mode": "abort", "clear_cache": True}))
    assert code == "FAILED_PRECONDITION"

    engine.result("pause", PAUSE_ABORT)
    loaded = engine.result("update_weights", {"uri": "/ckpt/3", "version": "3"})
    assert "uri /ckpt/3 was not sent" in loaded.data["message"]
    status = engine.result("status")
    assert status.data["state"]["weight_version"] == "3"
    assert "last set" in status.data["message"]
    posts = [(r["path"], r["body"]) for r in fake.log()["requests"] if r["method"] == "POST"]
    assert posts == [("/v1/pause", None), ("/v1/update_weights", {"version": "3"})]


def test_a_hung_load_times_out_then_reconciles(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("vllm")
    engine = client(start_adapter("vllm", fake.url).endpoint)
    engine.result("pause", PAUSE_ABORT)
    fake.knobs(hang="/collective_rpc")
    started = time.monotonic()
    replies = engine.call("update_weights", {"uri": "/ckpt/h", "version": "h"}, timeout_s=2.0)
    code, message = error_of(replies)
    assert code == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 2.5
    assert "the engine is paused, version default" in message
    assert engine.result("resume").data["state"]["paused"] is False
    fake.release()


def test_a_resume_without_answer_is_never_sent_twice(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("vllm")
    engine = client(start_adapter("vllm", fake.url).endpoint)
    engine.result("pause", PAUSE_ABORT)
    fake.knobs(hang="/resume")
    code, _ = error_of(engine.call("resume", timeout_s=1.0))
    assert code == "DEADLINE_EXCEEDED"
    code, message = error_of(engine.call("resume"))
    assert code == "FAILED_PRECONDITION" and "deadlock" in message
    assert fake.mutations().count("POST /resume") == 1
    fake.release()  # the first resume completes in the engine, on the fake's own time
    deadline = time.monotonic() + 10
    while fake.log()["paused"]:  # until the engine reads serving, the guard must hold
        assert time.monotonic() < deadline, "the released resume never completed"
        time.sleep(0.01)
    assert "nothing sent" in engine.result("resume").data["message"]
    assert fake.mutations().count("POST /resume") == 1


def test_5xx_is_retried_on_reads_only(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("fastdeploy")
    engine = client(start_adapter("fastdeploy", fake.url).endpoint)
    fake.knobs(fail={"path": "/v1/is_paused", "status": 500, "times": 2})
    assert engine.result("status").data["state"]["paused"] is False
    fake.knobs(fail={"path": "/v1/pause", "status": 500, "times": 1})
    code, message = error_of(engine.call("pause", PAUSE_ABORT))
    assert code == "INTERNAL" and "HTTP 500" in message
    assert fake.mutations() == ["POST /v1/pause"], "a pause is never repeated by the adapter"


def test_engine_down_adapter_up_mutations_fail_at_once(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    fake = fake_engine("vllm")
    adapter = start_adapter("vllm", fake.url)
    engine = client(adapter.endpoint)
    engine.result("status")
    fake.kill()
    code, message = error_of(engine.call("status"))
    assert code == "UNAVAILABLE" and "connection refused" in message
    started = time.monotonic()
    code, _ = error_of(engine.call("pause", PAUSE_ABORT))
    assert code == "UNAVAILABLE"
    assert time.monotonic() - started < 1.0, "fails at once, not at its deadline"
    assert adapter.proc is not None and adapter.proc.poll() is None, "the adapter stays up"


def test_adapter_starts_before_its_engine(
    fake_engine: Fake, start_adapter: Adapter, client: Callable[[str], EngineClient]
) -> None:
    from tests.harness import free_port

    port = free_port()
    adapter = start_adapter("sglang", f"http://127.0.0.1:{port}")
    assert "unknown" in adapter.ready["state"]
    engine = client(adapter.endpoint)
    code, _ = error_of(engine.call("resume"))
    assert code == "UNAVAILABLE"
    fake = FakeEngine("sglang")
    try:
        fake.start(port=port)
        assert engine.result("pause", PAUSE_ABORT).data["state"]["paused"] is True
    finally:
        fake.stop()


def test_bad_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "nokey"
    argv = [sys.executable, "-m", "control_service.adapters", "sglang", "--url",
            "http://127.0.0.1:1", "--bind", "tcp://127.0.0.1:0",
            "--api-key-file", str(missing)]  # fmt: skip
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "cannot read the API key file" in done.stderr and done.stderr.count("\n") == 1
    bad_url = [*argv[:5], "ftp://x", "--bind", "tcp://127.0.0.1:0"]
    done = subprocess.run(bad_url, check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "url must be http" in done.stderr
