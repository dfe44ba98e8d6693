"""Engines that come and go, without processes: the engines file's bounds and change detection,
the names DNS answers become, the configuration's checks, and Membership's rules (join, leave
with a grace, move, a name two sources claim, the capacity bound, one generation per change)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from control_service.cli import app, exit_codes
from control_service.server.config import (
    MAX_ENGINES_FILE_BYTES,
    ConfigError,
    EngineConfig,
    LinkConfig,
    ServiceConfig,
    load_engines,
)
from control_service.server.engines_dns import _engines
from control_service.server.engines_file import EnginesFile
from control_service.server.membership import Membership, Source
from control_service.server.sources import EngineSources
from tests.harness import eventually

# ---------------------------------------------------------------------------- engines file


def test_an_engines_file_over_the_size_bound_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "engines.txt"
    path.write_text("a=tcp://h:1\n" + "#" * MAX_ENGINES_FILE_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        load_engines(path)


def test_an_engines_file_names_each_engine_once(tmp_path: Path) -> None:
    path = tmp_path / "engines.txt"
    path.write_text("a=tcp://h:1\na=tcp://h:2\n")
    with pytest.raises(ConfigError, match="unique"):
        load_engines(path)


def test_an_engines_file_naming_a_flags_engine_is_refused_by_the_cli_and_the_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "engines.txt"
    path.write_text("a=tcp://h:1\nb=tcp://h:2\n")
    fixed = (EngineConfig("b", "tcp://h:9"),)
    with pytest.raises(ConfigError, match=r"engine names also given as flags: b$") as refused:
        EngineSources(ServiceConfig(engines=fixed, engines_file=path))
    assert refused.value.fields == ("engines_file",)
    argv = ["serve", "--engine", "b=tcp://h:9", "--engines-file", str(path)]
    assert app.main(argv) == exit_codes.USAGE, "before any engine process starts"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "engine names also given as flags: b" in err, err


async def test_the_file_watcher_sees_a_symlink_swap_and_keeps_the_last_good_set(
    tmp_path: Path,
) -> None:
    applied: list[list[EngineConfig]] = []
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1/engines.txt").write_text("a=tcp://h:1\n")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "engines.txt").symlink_to("..data/engines.txt")
    watcher = EnginesFile(tmp_path / "engines.txt", 60.0, applied.append)
    assert [e.name for e in watcher.load_initial()] == ["a"]
    await watcher.check()
    assert applied == [], "unchanged: not read again"

    (tmp_path / "v2").mkdir()
    (tmp_path / "v2/engines.txt").write_text("b=tcp://h:2\n")  # same size, new inode
    (tmp_path / "tmp").symlink_to("v2")
    os.replace(tmp_path / "tmp", tmp_path / "..data")
    await watcher.check()
    assert [[e.name for e in engines] for engines in applied] == [["b"]]

    (tmp_path / "v2/engines.txt").write_text("b=http://nope\n")
    await watcher.check()
    assert len(applied) == 1, "a bad file is not applied"
    await watcher.check(force=True)
    assert len(applied) == 1 and watcher.reloads == 3


# ------------------------------------------------------------------------------------- DNS


def test_dns_engines_are_named_by_hostname_else_by_address() -> None:
    engines = _engines(
        ["10.0.0.2", "10.0.0.1", "fd00::5", "10.0.0.3", "10.0.0.4", "10.0.0.1"],
        {"10.0.0.2": "vllm-1", "10.0.0.1": "vllm-0", "10.0.0.3": "x", "10.0.0.4": "x"},
        5560,
    )
    assert [(e.name, e.endpoint) for e in engines] == [
        ("10.0.0.3", "tcp://10.0.0.3:5560"),  # two addresses claim "x": neither gets it
        ("10.0.0.4", "tcp://10.0.0.4:5560"),
        ("fd00--5", "tcp://[fd00::5]:5560"),
        ("vllm-0", "tcp://10.0.0.1:5560"),  # one engine per address, however often listed
        ("vllm-1", "tcp://10.0.0.2:5560"),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"engines_dns": "engines.example"}, "HOST:PORT"),
        ({"engines_dns": "e.example:5560", "dns_server": "dns.example"}, "must be IP"),
        ({"engines_dns": "e.example:5560", "engines_dns_interval_s": 0.0}, "> 0"),
        ({"engines_dns": "e.example:5560", "engine_leave_grace_s": -1.0}, ">= 0"),
    ],
)
def test_bad_membership_settings_are_config_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServiceConfig(engines=(), **fields)


def test_a_dns_name_or_a_file_is_enough_engines() -> None:
    assert ServiceConfig(engines=(), engines_dns="e.example:5560", dns_server="::1").dynamic
    assert ServiceConfig(engines=(), engines_file=Path("engines.txt")).dynamic
    assert not ServiceConfig(engines=(EngineConfig("a", "tcp://h:1"),)).dynamic


# ------------------------------------------------------------------------------ membership


class FakeLink:
    def __init__(self, engine: EngineConfig, config: LinkConfig) -> None:
        self.name, self.endpoint, self.config = engine.name, engine.endpoint, config
        self.up = False
        self.started = False
        self.closed = ""

    def start(self, context: object) -> None:
        self.started = True

    def close(self, reason: str = "") -> None:
        self.closed = reason


class Fleet:
    """A Membership over fake links, with a settable 'held by a call' set."""

    def __init__(self, capacity: int = 100, grace: float = 60.0, **link: Any) -> None:
        self.made: list[FakeLink] = []
        self.held: set[str] = set()
        self.changes = 0
        self.dropped: list[str] = []
        self.m = Membership(
            LinkConfig(**link), self._make, leave_grace_s=grace, capacity=capacity,
            on_change=self._changed,
        )  # fmt: skip
        self.m.holds = self.held.__contains__
        self.m.on_drop = self.dropped.append
        self.m.start(object())

    def _make(self, engine: EngineConfig, config: LinkConfig) -> Any:
        link = FakeLink(engine, config)
        self.made.append(link)
        return link

    def _changed(self) -> None:
        self.changes += 1


def engines(**endpoints: str) -> list[EngineConfig]:
    return [EngineConfig(name, endpoint) for name, endpoint in endpoints.items()]


async def test_join_and_leave_change_the_members_once_each() -> None:
    fleet = Fleet()
    m = fleet.m
    assert m.update(Source.FILE, engines(a="tcp://h:1", b="tcp://h:2"))
    assert (m.members, m.generation, m.changes["added"]) == (("a", "b"), 1, 2)
    assert all(link.started for link in fleet.made)
    assert not m.update(Source.FILE, engines(a="tcp://h:1", b="tcp://h:2")), "no change"
    assert m.generation == 1
    assert m.update(Source.FILE, engines(b="tcp://h:2"))
    assert (m.members, m.generation, fleet.dropped) == (("b",), 2, ["a"])
    assert fleet.made[0].closed == "the engine left the fleet" and "a" not in m.links


async def test_a_held_engine_leaves_when_its_call_lets_go() -> None:
    fleet = Fleet()
    m = fleet.m
    m.update(Source.DNS, engines(a="tcp://h:1", b="tcp://h:2"))
    fleet.held.add("a")
    m.update(Source.DNS, engines(b="tcp://h:2"))
    assert m.members == ("b",) and "a" in m.leaving and "a" in m.links
    assert m.counts() == {"up": 0, "down": 1, "leaving": 1}
    fleet.held.discard("a")
    m.released("a")
    await asyncio.sleep(0)  # released() defers to the loop's next turn: one turn
    assert "a" not in m.links and "a" not in m.leaving and fleet.dropped == ["a"]


async def test_a_held_engine_is_closed_when_the_grace_ends() -> None:
    fleet = Fleet(grace=0.01)
    m = fleet.m
    m.update(Source.DNS, engines(a="tcp://h:1"))
    fleet.held.add("a")
    m.update(Source.DNS, [])
    link = fleet.made[0]
    await eventually(lambda: "a" not in m.links)  # the grace timer fires (bounded wait)
    assert "leave grace" in link.closed and m.leaving == {}


async def test_back_while_leaving_keeps_its_link_and_a_new_address_replaces_it() -> None:
    fleet = Fleet()
    m = fleet.m
    m.update(Source.DNS, engines(a="tcp://h:1"))
    fleet.held.add("a")
    m.update(Source.DNS, [])
    m.update(Source.DNS, engines(a="tcp://h:1"))
    assert m.members == ("a",) and not m.leaving and len(fleet.made) == 1
    assert m.update(Source.DNS, engines(a="tcp://h:9"))
    assert m.changes["moved"] == 1 and fleet.made[0].closed.startswith("the engine moved")
    assert m.links["a"].endpoint == "tcp://h:9"


async def test_a_name_is_owned_by_its_first_source_and_capacity_bounds_the_links() -> None:
    fleet = Fleet(capacity=2)
    m = fleet.m
    m.update(Source.FLAG, engines(a="tcp://h:1"))
    m.update(Source.DNS, engines(a="tcp://h:5", b="tcp://h:2", c="tcp://h:3"))
    assert m.members == ("a", "b") and m.sources == {"a": Source.FLAG, "b": Source.DNS}
    assert m.links["a"].endpoint == "tcp://h:1"


async def test_heartbeats_scale_as_the_fleet_grows() -> None:
    fleet = Fleet(heartbeat_rate=10.0)  # past 2 links (rate x 0.2 s) the interval grows
    m = fleet.m
    m.update(Source.DNS, engines(a="tcp://h:1"))
    assert fleet.made[0].config.heartbeat_ivl_s == 0.2
    m.update(Source.DNS, engines(a="tcp://h:1", b="tcp://h:2", c="tcp://h:3", d="tcp://h:4"))
    assert [link.config.heartbeat_ivl_s for link in fleet.made] == [pytest.approx(0.4)] * 4
