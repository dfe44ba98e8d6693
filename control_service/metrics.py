"""Prometheus metrics, on their own registry per server (so tests can run several servers).

What the service already counts (open slots, late and malformed replies, engine up) is read at
scrape time by a collector: the reply path pays nothing for it. Calls by method and status and
their latency are observed once, where each call ends. Engine round-trip time is observed on the
status probes (GetStatus and each Refit's final probe), off the mutating calls' hot path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from control_service.engine_link import EngineLink
    from control_service.slots import SlotBudget

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                    60, 120, 300)  # fmt: skip
_RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    def __init__(self, links: Mapping[str, EngineLink], budget: SlotBudget) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "control_calls", "Calls by method and final gRPC status.", ["method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "control_call_duration_seconds", "Call duration by method.", ["method"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.engine_rtt = Histogram(
            "control_engine_rtt_seconds", "Status probe round trip per engine.", ["engine"],
            buckets=_RTT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_LinkCollector(links, budget))
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def call_ended(self, method: str, status: str, seconds: float) -> None:
        """Count one finished call and observe its duration (once per call, at its end)."""
        children = self._children.get((method, status))
        if children is None:  # labels() costs more than the observation itself: look up once
            children = (self.calls.labels(method, status), self.latency.labels(method))
            self._children[(method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics over HTTP from a daemon thread (OSError if the port is taken)."""
        self._http = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        """Stop serving /metrics and free the port (a stopped server must not hold it)."""
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(5)


class _LinkCollector(Collector):
    def __init__(self, links: Mapping[str, EngineLink], budget: SlotBudget) -> None:
        self._links = links
        self._budget = budget

    def collect(self) -> Iterable[Metric]:
        slots = GaugeMetricFamily("control_open_slots", "Reply slots open now.")
        slots.add_metric([], self._budget.open)
        up = GaugeMetricFamily(
            "control_engine_up", "1 while the engine link is up.", labels=["engine"]
        )
        late = CounterMetricFamily(
            "control_engine_late_replies",
            "Engine replies dropped because no slot was open (late, duplicate or unknown).",
            labels=["engine"],
        )
        malformed = CounterMetricFamily(
            "control_engine_malformed_frames", "Engine frames dropped as malformed.",
            labels=["engine"],
        )  # fmt: skip
        for name, link in self._links.items():
            up.add_metric([name], 1 if link.up else 0)
            late.add_metric([name], link.slots.counters.unmatched)
            malformed.add_metric([name], link.counters.malformed)
        yield from (slots, up, late, malformed)
