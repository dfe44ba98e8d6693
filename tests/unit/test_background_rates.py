"""Background work bounded in total, not per engine link. Heartbeats: all links together beat at
most `heartbeat_rate` a second, between the configured interval (the floor) and
`heartbeat_ivl_max_s` (the ceiling), and the timeout keeps its ratio to the interval. The
service's own status probes: rounds at most `engine_probe_rate` engines a second."""

from __future__ import annotations

import pytest

from control_service.server.config import ConfigError, EngineConfig, LinkConfig, ServiceConfig


def test_few_links_keep_the_configured_heartbeats() -> None:
    config = LinkConfig()
    assert config.for_links(1) is config
    assert config.for_links(200) is config  # 200 links x 5 a second = the default rate


@pytest.mark.parametrize(
    ("links", "interval", "timeout"),
    [(256, 0.256, 0.768), (1024, 1.024, 3.072), (2000, 2.0, 6.0), (4096, 2.0, 6.0)],
)
def test_many_links_beat_slower_up_to_the_ceiling(
    links: int, interval: float, timeout: float
) -> None:
    scaled = LinkConfig().for_links(links)
    assert scaled.heartbeat_ivl_s == pytest.approx(interval)
    assert scaled.heartbeat_timeout_s == pytest.approx(timeout)
    if interval < LinkConfig().heartbeat_ivl_max_s:  # below the ceiling, the rate is kept
        assert links / scaled.heartbeat_ivl_s == pytest.approx(LinkConfig().heartbeat_rate)


def test_the_configured_interval_is_a_floor_and_other_fields_stay() -> None:
    slow = LinkConfig(heartbeat_ivl_s=5.0, heartbeat_timeout_s=15.0, send_hwm=7)
    assert slow.for_links(4096) is slow
    scaled = LinkConfig(heartbeat_rate=10.0, send_hwm=7).for_links(8)
    assert (scaled.heartbeat_ivl_s, scaled.heartbeat_timeout_s) == pytest.approx((0.8, 2.4))
    assert scaled.send_hwm == 7 and scaled.heartbeat_rate == 10.0


@pytest.mark.parametrize("field", ["heartbeat_ivl_s", "heartbeat_timeout_s", "heartbeat_rate"])
def test_heartbeat_settings_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError, match="must be > 0"):
        LinkConfig(**{field: 0.0})


def _service(engines: int, **fields: object) -> ServiceConfig:
    names = tuple(EngineConfig(f"e{i}", "tcp://127.0.0.1:9") for i in range(engines))
    return ServiceConfig(engines=names, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("engines", "interval"), [(1, 5.0), (1000, 5.0), (4096, 20.48)])
def test_probe_rounds_are_spread_to_keep_within_the_probe_rate(
    engines: int, interval: float
) -> None:
    assert _service(engines).probe_interval_s() == pytest.approx(interval)


def test_probe_interval_off_or_link_changes_only_is_kept() -> None:
    assert _service(4096, engine_probe_interval_s=None).probe_interval_s() is None
    assert _service(4096, engine_probe_interval_s=0.0).probe_interval_s() == 0.0
    with pytest.raises(ConfigError, match="probe rate must be > 0"):
        _service(1, engine_probe_rate=0.0)
