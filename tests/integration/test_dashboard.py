"""The Grafana dashboard queries only what the service exports: every metric named in every
PromQL expression (panels and variables) is in a real service's /metrics after real calls, and
every label it groups by is a label of those metrics (or one Prometheus adds: instance, job)."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from control_service.gen.control.v1 import control_pb2 as pb
from engine_stub import write_checkpoint
from tests.harness import StartService, free_port
from tests.stub_process import StubProcess

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/control-service.json"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus at scrape time
# PromQL words that look like names: functions are followed by "(", these are not always.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_NAME = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")  # not the "m" of "5m"


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression: panel targets (rows' nested panels too) and query variables."""
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield query["query"] if isinstance(query, dict) else query


def metrics_and_groupings(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression selects and the labels it groups by."""
    label_values = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)\s*", expr)
    if label_values:
        return {label_values[1]}, {label_values[2]}
    text = _STRING.sub('""', expr)
    labels = {name.strip() for group in _GROUPING.findall(text) for name in group.split(",")}
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors: [5m], [$__rate_interval]
    names = set()
    for match in _NAME.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match[0].lower() in KEYWORDS:
            continue  # a function or an aggregation operator
        names.add(match[0])
    return names, labels - {""}


def scrape(port: int) -> dict[str, set[str]]:
    """Sample name -> the label names it carries, from a real /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def test_the_expression_parser_finds_metrics_and_groupings() -> None:
    names, labels = metrics_and_groupings(
        'histogram_quantile(0.99, sum by (method, le) (rate(a_bucket{x="y(z)"}[$__rate_interval])))'
        " / on (job) b_total offset 5m"
    )
    assert names == {"a_bucket", "b_total"} and labels == {"method", "le", "job"}
    assert metrics_and_groupings("label_values(c, instance)") == ({"c"}, {"instance"})


async def test_every_metric_the_dashboard_queries_is_exported(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    stubs = {"e0": start_stub(), "e1": start_stub()}
    port = free_port()
    service = await start_service({n: s.endpoint for n, s in stubs.items()}, metrics_port=port)
    await service.events("Pause", pb.PauseRequest(), timeout=10)
    await service.failed("UpdateWeights", pb.UpdateWeightsRequest(uri="/no/such", version="1"))
    await service.events("Resume", pb.ResumeRequest(), timeout=10)
    await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    # A Refit whose e1 fails and is tolerated: the pause window histogram and the tolerated
    # failures counter have samples only after one.
    stubs["e1"].knob(fail_next={"code": "NOT_FOUND", "message": "x", "method": "update_weights"})
    write_checkpoint(tmp_path / "ckpt")
    uri = str(tmp_path / "ckpt")
    refit = pb.RefitRequest(uri=uri, version="2", max_failed_engines=1)
    await service.events("Refit", refit, timeout=30)
    exported = await asyncio.to_thread(scrape, port)

    dashboard = json.loads(DASHBOARD.read_text())
    queried = list(expressions(dashboard))
    assert len(queried) >= 10, "the dashboard's expressions were found"
    missing, ungrouped = set(), set()
    for expr in queried:
        names, labels = metrics_and_groupings(expr)
        assert names, f"no metric found in {expr!r}"
        missing |= names - exported.keys()
        carried = set().union(*(exported.get(name, set()) for name in names)) | TARGET_LABELS
        ungrouped |= {(label, expr) for label in labels - carried}
    assert not missing, f"the dashboard queries metrics the service does not export: {missing}"
    assert not ungrouped, f"grouped by labels the metrics do not carry: {ungrouped}"
