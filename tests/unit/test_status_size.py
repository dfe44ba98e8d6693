"""The status sent at the edge stays under 8 KiB as sent, whatever texts it carries: over the
client's 16 KiB header limit, the caller would get RESOURCE_EXHAUSTED instead of the status."""

from __future__ import annotations

import base64

import grpc
import pytest

from control_service.errors import (
    STATUS_MAX_BYTES,
    ControlError,
    EngineFailure,
    _sent_bytes,
    clip,
    to_grpc_status,
)


def sent_size(status: grpc.Status) -> int:
    """grpc-message percent-encoded plus grpc-status-details-bin base64, as on the wire."""
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return _sent_bytes(status.details) + len(base64.b64encode(details))


@pytest.mark.parametrize("text", ["x" * 100_000, "é\x1b" * 50_000, "%" * 100_000])
def test_a_status_with_huge_texts_stays_under_8_kib(text: str) -> None:
    failures = tuple(
        EngineFailure(f"engine-{i}-{text[:200]}", grpc.StatusCode.NOT_FOUND, text)
        for i in range(64)
    )
    status = to_grpc_status(ControlError(grpc.StatusCode.NOT_FOUND, text, failures))
    assert sent_size(status) < STATUS_MAX_BYTES
    assert "characters clipped" in status.details
    assert status.code == grpc.StatusCode.NOT_FOUND


def test_a_short_status_is_sent_whole() -> None:
    failure = EngineFailure("e0", grpc.StatusCode.NOT_FOUND, "no such checkpoint")
    status = to_grpc_status(
        ControlError(grpc.StatusCode.NOT_FOUND, "e0: NOT_FOUND: no", (failure,))
    )
    assert status.details == "e0: NOT_FOUND: no"
    assert b"no such checkpoint" in dict(status.trailing_metadata)["grpc-status-details-bin"]


def test_clip_shortens_and_quotes() -> None:
    assert clip("a" * 100) == repr("a" * 64 + "...")
    assert clip("bad\nid") == "'bad\\nid'"
