"""Both clients send the trainer's current span with every call (their shared call metadata), and
nothing when no span is current."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider

from control_service.client import _utils as utils


def test_call_metadata_carries_the_current_span_beside_the_token() -> None:
    tracer = TracerProvider().get_tracer("trainer")
    with tracer.start_as_current_span("train step") as span:
        sent = dict(utils.metadata("s3cret-token-0123456789"))
    ctx = span.get_span_context()
    assert sent["authorization"] == "Bearer s3cret-token-0123456789"
    assert sent["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")


def test_without_a_current_span_the_metadata_is_as_before() -> None:
    assert utils.metadata(None) is None
    assert utils.metadata("s3cret-token-0123456789") == (
        ("authorization", "Bearer s3cret-token-0123456789"),
    )
    with TracerProvider().get_tracer("trainer").start_as_current_span("step"):
        assert any(key == "traceparent" for key, _ in utils.metadata(None) or ())
