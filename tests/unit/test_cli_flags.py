"""Every flag and CONTROL_SERVICE_* variable of the argparse CLI keeps working on click, with the
same meaning; per-call arguments never come from the environment; bad usage exits 2 in one line.

OLD_* below are the lists `--help` printed before the move to click (captured from it), so
that a flag or variable dropped by mistake fails here by name.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import grpc
import pytest
import zmq.auth

from control_service.cli import app, exit_codes, healthcheck, serve
from control_service.cli.call import Call
from control_service.cli.demo import DemoOptions
from control_service.cli.healthcheck import HealthCheck
from control_service.cli.serve import Serve
from control_service.server.config import EngineConfig, LinkConfig, SecurityConfig, ServiceConfig
from tests.certs import make_ca, make_leaf

OLD_SERVE_FLAGS = (
    "--embedded-engine --engine --engines-file --embedded-engines --embedded-transport "
    "--engine-args --log-level --log-format --listen --default-timeout --max-timeout "
    "--default-pause-mode --status-timeout --max-open-slots --slot-queue-events "
    "--max-message-bytes --retry-window --retry-max-records --detach-grace --shutdown-grace "
    "--metrics-port --tls-cert --tls-key --tls-client-ca --auth-token --auth-token-file "
    "--auth-exempt-health --engine-curve-server-key --engine-curve-client-key "
    "--heartbeat-interval --heartbeat-timeout --reconnect-interval --reconnect-interval-max "
    "--max-frame-bytes --send-hwm"
).split()
OLD_CONNECTION_FLAGS = (
    "--target --timeout --retries --token --tls-ca --tls-cert --tls-key --tls-server-name "
    "--keepalive --json"
).split()
OLD_ACTION_FLAGS = {
    "pause": ["--mode", "--clear-cache", "--request-id", "--engine"],
    "update-weights": ["--request-id", "--engine"],
    "stage-weights": ["--request-id", "--engine"],
    "resume": ["--request-id", "--engine"],
    "refit": ["--mode", "--clear-cache", "--stage", "--on-failure", "--pause-timeout",
              "--update-timeout", "--resume-timeout", "--stage-timeout", "--request-id",
              "--engine"],
    "status": ["--engine"],
}  # fmt: skip
OLD_DEMO_FLAGS = (
    "--embedded-engines --engine-args --embedded-transport --timeout --log-level --log-format "
    "--engine-logs"
).split()
OLD_HEALTH_FLAGS = (
    "--target --service --timeout --tls-ca --tls-cert --tls-key --tls-server-name --token"
).split()
# Every serve flag but --embedded-engine had its variable; of call's, the connection flags but
# --json; demo had none; the healthcheck's were CONTROL_SERVICE_HEALTH_<FLAG>.
NO_VARIABLE = {"--embedded-engine", "--json"}


def variable(flag: str, prefix: str = "CONTROL_SERVICE_") -> str:
    return prefix + flag.removeprefix("--").replace("-", "_").upper()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    import os

    for name in [n for n in os.environ if n.startswith("CONTROL_SERVICE_")]:
        monkeypatch.delenv(name)
    yield monkeypatch


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Key material that passes the config checks (certificates, CURVE keys, a token file)."""
    ca_pair, ca, ca_key = make_ca(tmp_path)
    server = make_leaf(tmp_path, "srv", ca, ca_key, server=True)
    public, secret = zmq.auth.create_certificates(tmp_path, "curve")
    token = tmp_path / "token"
    token.write_text("a-token-of-24-characters\n")
    engines = tmp_path / "engines.txt"
    engines.write_text("f0=tcp://h:9\n")
    return {
        "cert": server.cert, "key": server.key, "ca": ca_pair.cert, "token": token,
        "curve_public": Path(public), "curve_secret": Path(secret), "engines": engines,
    }  # fmt: skip


def plan(*argv: str) -> Any:
    result = app.parse(list(argv))
    assert not isinstance(result, int)
    return result


ENGINE = ("--engine", "tcp://h:1")

# flag -> (value, other flags it needs, what it sets, the value that must come out)
SERVE_CASES: dict[str, tuple[str, tuple[str, ...], Callable[[Serve], Any], Any]] = {
    "--engine": ("a=tcp://h:1", (), lambda p: p.config.engines, (EngineConfig("a", "tcp://h:1"),)),
    "--engines-file": ("@engines", (), lambda p: p.config.engines_file, "@engines"),
    "--embedded-engines": ("2", (), lambda p: (p.embedded, [e.name for e in p.config.engines]),
                           (2, ["embedded-0", "embedded-1"])),
    "--embedded-transport": ("tcp", ENGINE, lambda p: p.transport, "tcp"),
    "--engine-args": ("--x 'a b'", ENGINE, lambda p: p.engine_args, ("--x", "a b")),
    "--log-level": ("debug", ENGINE, lambda p: p.log_level, "debug"),
    "--log-format": ("json", ENGINE, lambda p: p.log_format, "json"),
    "--listen": ("0.0.0.0:7", ENGINE, lambda p: p.config.listen, "0.0.0.0:7"),
    "--default-timeout": ("30", ENGINE, lambda p: p.config.default_timeout_s, 30.0),
    "--max-timeout": ("300", ENGINE, lambda p: p.config.max_timeout_s, 300.0),
    "--default-pause-mode": ("keep", ENGINE, lambda p: p.config.default_pause_mode, "keep"),
    "--status-timeout": ("1.5", ENGINE, lambda p: p.config.status_timeout_s, 1.5),
    "--engine-probe-interval": ("0", ENGINE, lambda p: p.config.engine_probe_interval_s, 0.0),
    "--max-open-slots": ("9", ENGINE, lambda p: p.config.max_open_slots, 9),
    "--slot-queue-events": ("8", ENGINE, lambda p: p.config.slot_queue_events, 8),
    "--max-message-bytes": ("4096", ENGINE, lambda p: p.config.max_message_bytes, 4096),
    "--retry-window": ("0", ENGINE, lambda p: p.config.retry_window_s, 0.0),
    "--retry-max-records": ("7", ENGINE, lambda p: p.config.retry_max_records, 7),
    "--detach-grace": ("0.5", ENGINE, lambda p: p.config.detach_grace_s, 0.5),
    "--shutdown-grace": ("3", ENGINE, lambda p: p.config.shutdown_grace_s, 3.0),
    "--metrics-port": ("9090", ENGINE, lambda p: p.config.metrics_port, 9090),
    "--tls-cert": ("@cert", (*ENGINE, "--tls-key", "@key"), lambda p: p.config.security.tls_cert,
                   "@cert"),
    "--tls-key": ("@key", (*ENGINE, "--tls-cert", "@cert"), lambda p: p.config.security.tls_key,
                  "@key"),
    "--tls-client-ca": ("@ca", (*ENGINE, "--tls-cert", "@cert", "--tls-key", "@key"),
                        lambda p: p.config.security.tls_client_ca, "@ca"),
    "--auth-token": ("a-token-of-24-characters", ENGINE, lambda p: p.config.security.token(),
                     "a-token-of-24-characters"),
    "--auth-token-file": ("@token", ENGINE, lambda p: p.config.security.token(),
                          "a-token-of-24-characters"),
    "--auth-exempt-health": ("true", ENGINE, lambda p: p.config.security.auth_exempt_health, True),
    "--engine-curve-server-key": ("@curve_public",
                                  (*ENGINE, "--engine-curve-client-key", "@curve_secret"),
                                  lambda p: p.config.link.curve_server_key, "@curve_public"),
    "--engine-curve-client-key": ("@curve_secret",
                                  (*ENGINE, "--engine-curve-server-key", "@curve_public"),
                                  lambda p: p.config.link.curve_client_key, "@curve_secret"),
    "--heartbeat-interval": ("0.3", ENGINE, lambda p: p.config.link.heartbeat_ivl_s, 0.3),
    "--heartbeat-timeout": ("1.5", ENGINE, lambda p: p.config.link.heartbeat_timeout_s, 1.5),
    "--reconnect-interval": ("0.2", ENGINE, lambda p: p.config.link.reconnect_ivl_s, 0.2),
    "--reconnect-interval-max": ("3", ENGINE, lambda p: p.config.link.reconnect_ivl_max_s, 3.0),
    "--max-frame-bytes": ("2048", ENGINE, lambda p: p.config.link.max_frame_bytes, 2048),
    "--send-hwm": ("5", ENGINE, lambda p: p.config.link.send_hwm, 5),
    # added since the move to click
    "--max-callers-per-call": ("3", ENGINE, lambda p: p.config.max_callers_per_operation, 3),
    "--max-streams-per-connection": ("9", ENGINE, lambda p: p.config.max_concurrent_streams, 9),
    "--metrics-listen": ("0.0.0.0:9090", ENGINE, lambda p: p.config.metrics_listen, "0.0.0.0:9090"),
    "--recv-hwm": ("7", ENGINE, lambda p: p.config.link.recv_hwm, 7),
    "--max-status-probes": ("2", ENGINE, lambda p: p.config.link.max_status_probes, 2),
    "--heartbeat-rate": ("50", ENGINE, lambda p: p.config.link.heartbeat_rate, 50.0),
    "--engine-probe-rate": ("20", ENGINE, lambda p: p.config.engine_probe_rate, 20.0),
    "--heartbeat-interval-max": ("4", ENGINE, lambda p: p.config.link.heartbeat_ivl_max_s, 4.0),
    # engines that come and go
    "--engines-file-interval": ("0.5", ENGINE, lambda p: p.config.engines_file_interval_s, 0.5),
    "--engines-dns": ("engines.example:5560", (), lambda p: p.config.engines_dns,
                      "engines.example:5560"),
    "--engines-dns-interval": ("3", ENGINE, lambda p: p.config.engines_dns_interval_s, 3.0),
    "--dns-server": ("127.0.0.1:5353", ENGINE, lambda p: p.config.dns_server, "127.0.0.1:5353"),
    "--engine-leave-grace": ("7", ENGINE, lambda p: p.config.engine_leave_grace_s, 7.0),
    "--ready-min-engines": ("3", ENGINE, lambda p: p.config.ready_min_engines, 3),
}  # fmt: skip


def _fill(text: Any, files: dict[str, Path]) -> Any:
    return files[text[1:]] if isinstance(text, str) and text.startswith("@") else text


def test_every_serve_flag_has_a_case() -> None:
    assert set(OLD_SERVE_FLAGS) - {"--embedded-engine"} <= set(SERVE_CASES)
    names = {opt for param in serve.command.params for opt in param.opts}
    assert names - {"--embedded-engine", "--help", "-h"} == set(SERVE_CASES)


@pytest.mark.parametrize("flag", sorted(SERVE_CASES))
def test_old_serve_flag_and_variable_mean_the_same(
    flag: str, files: dict[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    text, others, got, wanted = SERVE_CASES[flag]
    value, wanted = str(_fill(text, files)), _fill(wanted, files)
    extra = [str(_fill(t, files)) for t in others]
    assert got(plan("serve", *extra, flag, value)) == wanted, "from the flag"
    clean_env.setenv(variable(flag), value)
    assert got(plan("serve", *extra)) == wanted, f"from {variable(flag)}"


def test_flag_wins_over_variable_which_wins_over_default(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CONTROL_SERVICE_MAX_OPEN_SLOTS", "9")
    clean_env.setenv("CONTROL_SERVICE_SHUTDOWN_GRACE", "3")
    clean_env.setenv("CONTROL_SERVICE_ENGINE", "a=tcp://h:1, b=ipc:///tmp/b.sock")
    config = plan("serve", "--max-open-slots", "7").config
    assert (config.max_open_slots, config.shutdown_grace_s) == (7, 3.0)
    assert (
        config.default_timeout_s == ServiceConfig.__dataclass_fields__["default_timeout_s"].default
    )
    assert [e.name for e in config.engines] == ["a", "b"], "the variable holds a list"
    assert [e.name for e in plan("serve", "--engine", "c=tcp://h:2").config.engines] == ["c"]


def test_bare_flags_keep_their_meaning() -> None:
    assert plan("serve", "--embedded-engine").embedded == 1
    bare = plan("serve", *ENGINE, "--auth-exempt-health", "--listen", "127.0.0.1:0")
    assert bare.config.security.auth_exempt_health is True and bare.config.listen == "127.0.0.1:0"
    assert (
        plan("serve", *ENGINE, "--auth-exempt-health", "false").config.security.auth_exempt_health
        is False
    )
    names = [e.name for e in plan("serve", *ENGINE, "--engine", "tcp://h:2", "--embedded-engines",
                                  "2").config.engines]  # fmt: skip
    assert names == ["engine-0", "engine-1", "embedded-0", "embedded-1"]


def test_every_service_and_link_field_has_a_serve_flag() -> None:
    covered = {(cls, name) for _flag, cls, name, _t, _h in serve.SERVICE_FLAGS}
    wanted = {(ServiceConfig, f.name) for f in dataclasses.fields(ServiceConfig)} - {
        (ServiceConfig, "engines"), (ServiceConfig, "link"), (ServiceConfig, "security"),
    }  # fmt: skip
    wanted |= {(LinkConfig, f.name) for f in dataclasses.fields(LinkConfig)}
    wanted |= {(SecurityConfig, f.name) for f in dataclasses.fields(SecurityConfig)}
    assert wanted - covered == set(), "add a serve flag for each new config field"


# ------------------------------------------------------------------------------------- call

CONNECTION_CASES: dict[str, tuple[str, Callable[[Call], Any], Any]] = {
    "--target": ("10.0.0.1:7", lambda p: p.client.target, "10.0.0.1:7"),
    "--timeout": ("3", lambda p: p.client.timeout_s, 3.0),
    "--retries": ("2", lambda p: p.client.retries, 2),
    "--token": ("tok", lambda p: p.client.bearer_token, "tok"),
    "--tls-ca": ("/ca.pem", lambda p: p.client.tls.root_cert, Path("/ca.pem")),
    "--tls-cert": ("/c.pem", lambda p: p.client.tls.cert_chain, Path("/c.pem")),
    "--tls-key": ("/k.pem", lambda p: p.client.tls.private_key, Path("/k.pem")),
    "--tls-server-name": ("svc", lambda p: p.client.tls.server_name_override, "svc"),
    "--keepalive": ("0", lambda p: p.client.keepalive_time_s, None),
}
WEIGHTS_ACTIONS = ("update-weights", "stage-weights", "refit")  # take URI VERSION
TLS_PAIR = {"--tls-cert": ("--tls-key", "/k.pem"), "--tls-key": ("--tls-cert", "/c.pem")}


def test_every_old_call_flag_is_accepted_by_each_action() -> None:
    assert set(OLD_CONNECTION_FLAGS) == {*CONNECTION_CASES, "--json"}
    for action, flags in OLD_ACTION_FLAGS.items():
        command = app.root.commands["call"].commands[action]  # type: ignore[attr-defined]
        names = {opt for param in command.params for opt in param.opts}
        assert {*OLD_CONNECTION_FLAGS, *flags} <= names, action


@pytest.mark.parametrize("flag", sorted(CONNECTION_CASES))
@pytest.mark.parametrize("action", sorted(OLD_ACTION_FLAGS))
def test_connection_flag_before_or_after_the_action_and_its_variable(
    flag: str, action: str, clean_env: pytest.MonkeyPatch
) -> None:
    text, got, wanted = CONNECTION_CASES[flag]
    positional = ["/ckpt", "5"] if action in WEIGHTS_ACTIONS else []
    pair = list(TLS_PAIR.get(flag, ()))
    assert got(plan("call", action, *positional, flag, text, *pair)) == wanted, "after"
    assert got(plan("call", flag, text, *pair, action, *positional)) == wanted, "before"
    clean_env.setenv(variable(flag), text)
    assert got(plan("call", action, *positional, *pair)) == wanted, variable(flag)


def test_a_flag_on_the_command_line_wins_wherever_it_is(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CONTROL_SERVICE_TARGET", "from-env:1")
    assert plan("call", "--target", "before:1", "status").client.target == "before:1"
    assert plan("call", "status", "--target", "after:1").client.target == "after:1"
    assert plan("call", "--target", "b:1", "status", "--target", "a:1").client.target == "a:1"
    assert plan("call", "status").client.target == "from-env:1"
    assert (
        plan("call", "--json", "status").json_lines and plan("call", "status", "--json").json_lines
    )


PER_CALL = [
    ("pause", ["--mode", "keep"], lambda p: p.arguments["mode"], "keep", "CONTROL_SERVICE_MODE"),
    ("pause", ["--clear-cache"], lambda p: p.arguments["clear_cache"], True,
     "CONTROL_SERVICE_CLEAR_CACHE"),
    ("resume", ["--request-id", "r-1"], lambda p: p.request_id, "r-1",
     "CONTROL_SERVICE_REQUEST_ID"),
    ("status", ["--engine", "e1", "--engine", "e2"], lambda p: p.engines, ("e1", "e2"),
     "CONTROL_SERVICE_ENGINE"),
    ("refit", ["/c", "1", "--on-failure", "stay_paused"], lambda p: p.arguments["on_failure"],
     "stay_paused", "CONTROL_SERVICE_ON_FAILURE"),
    ("refit", ["/c", "1", "--pause-timeout", "2"], lambda p: p.arguments["pause_timeout"], 2.0,
     "CONTROL_SERVICE_PAUSE_TIMEOUT"),
    ("refit", ["/c", "1", "--update-timeout", "3"], lambda p: p.arguments["update_timeout"], 3.0,
     "CONTROL_SERVICE_UPDATE_TIMEOUT"),
    ("refit", ["/c", "1", "--resume-timeout", "4"], lambda p: p.arguments["resume_timeout"], 4.0,
     "CONTROL_SERVICE_RESUME_TIMEOUT"),
    ("update-weights", ["/ckpt", "v9"], lambda p: (p.arguments["uri"], p.arguments["version"]),
     ("/ckpt", "v9"), "CONTROL_SERVICE_VERSION"),
    ("stage-weights", ["/ckpt", "v9"], lambda p: (p.arguments["uri"], p.arguments["version"]),
     ("/ckpt", "v9"), "CONTROL_SERVICE_URI"),
    ("refit", ["/c", "1", "--stage"], lambda p: p.arguments["stage"], True,
     "CONTROL_SERVICE_STAGE"),
    ("refit", ["/c", "1", "--stage-timeout", "5"], lambda p: p.arguments["stage_timeout"], 5.0,
     "CONTROL_SERVICE_STAGE_TIMEOUT"),
]  # fmt: skip


@pytest.mark.parametrize(("action", "argv", "got", "wanted", "env"), PER_CALL)
def test_per_call_arguments_work_and_never_come_from_the_environment(
    action: str, argv: list[str], got: Callable[[Call], Any], wanted: Any, env: str,
    clean_env: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert got(plan("call", action, *argv)) == wanted
    clean_env.setenv(env, "stale")
    clean_env.setenv("CONTROL_SERVICE_JSON", "true")
    bare = plan("call", action, *argv[:2]) if action in WEIGHTS_ACTIONS else None
    stale = plan("call", action) if bare is None else bare
    assert "stale" not in (stale.request_id, *stale.engines, *map(str, stale.arguments.values()))
    assert stale.json_lines is False


# -------------------------------------------------------------------------- demo, healthcheck

DEMO_CASES = {
    "--embedded-engines": ("2", "engines", 2),
    "--engine-args": ("--x 1", "engine_args", ("--x", "1")),
    "--embedded-transport": ("tcp", "transport", "tcp"),
    "--timeout": ("5", "timeout_s", 5.0),
    "--log-level": ("debug", "log_level", "debug"),
    "--log-format": ("json", "log_format", "json"),
}


def test_every_old_demo_flag_keeps_its_meaning_and_reads_no_variable(
    clean_env: pytest.MonkeyPatch,
) -> None:
    assert set(OLD_DEMO_FLAGS) == {*DEMO_CASES, "--engine-logs"}
    assert plan("demo", "--engine-logs").engine_logs is True
    for flag, (text, field, wanted) in DEMO_CASES.items():
        options = plan("demo", flag, text)
        assert isinstance(options, DemoOptions) and getattr(options, field) == wanted, flag
        clean_env.setenv(variable(flag), text)
        assert getattr(plan("demo"), field) == getattr(DemoOptions(), field), variable(flag)


HEALTH_CASES = {
    "--target": ("10.1.1.1:9", "target", "10.1.1.1:9"),
    "--service": ("liveness", "service", "liveness"),
    "--timeout": ("7", "timeout", 7.0),
    "--tls-ca": ("/ca.pem", "tls_ca", Path("/ca.pem")),
    "--tls-cert": ("/c.pem", "tls_cert", Path("/c.pem")),
    "--tls-key": ("/k.pem", "tls_key", Path("/k.pem")),
    "--tls-server-name": ("svc", "tls_server_name", "svc"),
    "--token": ("tok", "token", "tok"),
}


@pytest.mark.parametrize("flag", sorted(HEALTH_CASES))
def test_healthcheck_flag_and_its_health_variable(flag: str, clean_env: pytest.MonkeyPatch) -> None:
    assert set(OLD_HEALTH_FLAGS) == set(HEALTH_CASES)
    text, field, wanted = HEALTH_CASES[flag]
    for prefix in (
        [],
        ["healthcheck"],
    ):  # python -m ...healthcheck, and control-service healthcheck
        command = healthcheck.command if not prefix else app.root
        check = app.parse([*prefix, flag, text], command)
        assert isinstance(check, HealthCheck) and getattr(check, field) == wanted
    clean_env.setenv(variable(flag, "CONTROL_SERVICE_HEALTH_"), text)
    assert getattr(app.parse([], healthcheck.command), field) == wanted
    clean_env.setenv("CONTROL_SERVICE_LISTEN", "0.0.0.0:6000")
    clean_env.delenv(variable(flag, "CONTROL_SERVICE_HEALTH_"))
    assert app.parse([], healthcheck.command).target == "127.0.0.1:6000"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("argv", "flags"),
    [(["serve"], OLD_SERVE_FLAGS), (["call"], OLD_CONNECTION_FLAGS),
     *((["call", a], OLD_CONNECTION_FLAGS + f) for a, f in OLD_ACTION_FLAGS.items()),
     (["demo"], OLD_DEMO_FLAGS)],
)  # fmt: skip
def test_help_lists_every_old_flag_with_its_variable(
    argv: list[str], flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert app.main([*argv, "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # wrapping may split a long name
    for flag in flags:
        assert flag in text, flag
        if argv != ["demo"] and flag not in NO_VARIABLE and not _per_call(flag, argv):
            assert f"envvar:{variable(flag)}" in text, flag


def _per_call(flag: str, argv: list[str]) -> bool:
    return len(argv) == 2 and flag in OLD_ACTION_FLAGS[argv[1]]


# ------------------------------------------------------------------------- bad usage: exit 2


@pytest.mark.parametrize(
    ("argv", "env", "reason"),
    [
        (["serve"], {}, "at least one engine is required (--engine, --engines-file, "
         "--engines-dns or --embedded-engines)"),
        (["serve", "--engines-dns", "engines.example"], {},
         "the engines DNS name 'engines.example' must be HOST:PORT with a port in 1-65535 "
         "(--engines-dns)"),
        (["serve", *ENGINE, "--dns-server", "dns.example"], {},
         "the DNS server 'dns.example' must be IP[:PORT] ([IPv6]:PORT) (--dns-server)"),
        (["serve", *ENGINE, "--default-timeout", "1000"], {},
         "need 0 < default timeout <= max timeout (--default-timeout, --max-timeout)"),
        (["serve", "--engine", "a=tcp://h:1", "--engine", "a=tcp://h:2"], {}, "unique"),
        (["serve", "--engine", "http://h:1"], {}, "must be tcp://"),
        (["serve", *ENGINE, "--listen", "localhost"], {}, "not HOST:PORT"),
        (["serve", *ENGINE, "--max-open-slots", "0"], {}, "x>=1"),
        (["serve", "--embedded-engine"], {"CONTROL_SERVICE_SEND_HWM": "x"},
         "CONTROL_SERVICE_SEND_HWM (for --send-hwm)"),
        (["serve", "--embedded-engine"], {"CONTROL_SERVICE_DEFAULT_PAUSE_MODE": "nap"},
         "CONTROL_SERVICE_DEFAULT_PAUSE_MODE"),
        (["serve", *ENGINE, "--tls-cert", "/etc/hostname"], {},
         "the TLS certificate and key go together (--tls-cert, --tls-key)"),
        (["call", "pause", "--tls-cert", "/c.pem"], {}, "both a certificate chain and a key"),
        (["call", "pause", "--mode", "nap"], {}, "'nap' is not one of"),
        (["call", "--target"], {}, "requires an argument"),
        (["call", "nap"], {}, "No such command 'nap'"),
    ],
)  # fmt: skip
def test_bad_usage_exits_2_with_one_line(
    argv: list[str], env: dict[str, str], reason: str, capsys: pytest.CaptureFixture[str],
    clean_env: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert app.main(argv) == exit_codes.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("control-service") and reason in err, err


def test_python_dash_m_reports_bad_configuration_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "control_service", "serve", *ENGINE, "--max-timeout", "5"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "control-service serve: error: need 0 < default timeout <= max timeout "
        "(--default-timeout, --max-timeout)\n"
    )


def test_healthcheck_usage_errors_exit_1_for_docker(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["--bogus"]) == 1
    assert "No such option '--bogus'" in capsys.readouterr().err


def test_exit_codes_are_stable_and_documented() -> None:
    assert exit_codes.for_status(grpc.StatusCode.UNAVAILABLE) == 114
    assert exit_codes.for_status(grpc.StatusCode.NOT_FOUND) == 105
    assert "114 UNAVAILABLE" in exit_codes.HELP and "100+CODE" in exit_codes.HELP
    assert (exit_codes.OK, exit_codes.FAILURE, exit_codes.USAGE, exit_codes.INTERRUPTED) == (
        0, 1, 2, 130,
    )  # fmt: skip


def test_a_new_command_is_one_module_with_a_command() -> None:
    names = {c.name for c in app.COMMANDS}
    assert names == {"serve", "call", "demo", "healthcheck", "adapt"}
    assert all(isinstance(c, click.Command) for c in app.COMMANDS)
