"""Calls across hundreds of engine links: a failure on every one of them still reaches the
caller as its real status, naming engines, instead of a transport error about trailer size."""

from __future__ import annotations

import grpc

from control_service.client import ClientConfig, ControlClient
from control_service.errors import STATUS_MAX_BYTES, ControlError
from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import StartService, free_port

LINKS = 400


async def test_a_call_failing_on_400_engines_ends_with_its_own_status(
    start_service: StartService,
) -> None:
    nobody = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: every link stays down
    service = await start_service([nobody] * LINKS, wait_up=False)

    error, events = await service.failed("Pause", pb.PauseRequest())
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()[:200]
    assert error.details().startswith(f"{LINKS} of {LINKS} engines failed: e"), error.details()[:80]
    assert len(error.details().encode()) <= STATUS_MAX_BYTES, "fits in any trailer"
    errors = {e.engine for e in events if e.HasField("error")}
    assert len(errors) == LINKS, "every engine's own failure is still in its event"

    async with ControlClient(ClientConfig(target=service.target)) as client:
        try:
            await client.resume()
        except ControlError as failure:
            assert failure.code == grpc.StatusCode.UNAVAILABLE, failure.message[:200]
            assert failure.failures and all(
                f.code == grpc.StatusCode.UNAVAILABLE for f in failure.failures
            ), "the engines the status names come with their ErrorInfo"
        else:
            raise AssertionError("resume on 400 unreachable engines succeeded")
