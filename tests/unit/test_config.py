"""Configuration: engines from a file for large N, security and metrics flags from flags or env
(flags win), all validated at start with a one-line reason and exit code 2. The config layer
raises ConfigError: a plain error that borrows no gRPC code and names fields, never flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq.auth

from control_service.cli import app, serve
from control_service.server.config import (
    ConfigError,
    EngineConfig,
    LinkConfig,
    SecurityConfig,
    ServiceConfig,
    load_engines,
)
from tests.certs import make_ca, make_leaf


def test_engines_file_with_names_comments_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "engines.txt"
    path.write_text("# replicas\ndp0=tcp://127.0.0.2:5555\n\ntcp://127.0.0.3:5555  # unnamed\n")
    assert load_engines(path) == [
        EngineConfig("dp0", "tcp://127.0.0.2:5555"),
        EngineConfig("engine-4", "tcp://127.0.0.3:5555"),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "no engines"), ("x=udp://h:1\n", ":1:"), ("a b=tcp://h:1\n", "engine name")],
)
def test_bad_engines_file_names_the_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "engines.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_engines(path)


def test_serve_with_bad_engines_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "engines.txt"
    path.write_text("ok=tcp://127.0.0.1:1\nok=tcp://127.0.0.1:2\n")
    done = subprocess.run(
        [sys.executable, "-m", "control_service", "serve", "--engines-file", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unique" in lines[0], done.stderr


# ------------------------------------------------------------------- security and metrics flags


def _serve_config(argv: list[str], env: dict[str, str]) -> ServiceConfig:
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("CONTROL_SERVICE_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        plan = app.parse(["serve", "--engine", "tcp://h:1", *argv])
    assert isinstance(plan, serve.Serve)
    return plan.config


def test_security_and_metrics_flags_from_env_and_flags_win(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789\n")
    env = {
        "CONTROL_SERVICE_AUTH_TOKEN_FILE": str(token_file),
        "CONTROL_SERVICE_AUTH_EXEMPT_HEALTH": "true",
        "CONTROL_SERVICE_METRICS_PORT": "9090",
    }
    from_env = _serve_config([], env)
    assert from_env.metrics_port == 9090
    assert from_env.security.token() == "from-the-file-0123456789"
    assert from_env.security.auth_exempt_health is True
    flagged = _serve_config(["--metrics-port", "0", "--auth-exempt-health", "false"], env)
    assert flagged.metrics_port == 0 and flagged.security.auth_exempt_health is False
    bare = _serve_config(["--auth-exempt-health"], {})
    assert bare.security.auth_exempt_health is True, "the bare flag means true"
    secret = {"CONTROL_SERVICE_AUTH_TOKEN": "from-the-environment-42"}
    assert _serve_config([], secret).security.token() == "from-the-environment-42"
    assert SecurityConfig().token() is None, "no token configured: no auth"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Good and bad key material: test certificates, CURVE key files, garbage."""
    _ca_pair, ca, ca_key = make_ca(tmp_path)
    server, other = (make_leaf(tmp_path, n, ca, ca_key, server=True) for n in ("srv", "other"))
    public, secret = zmq.auth.create_certificates(tmp_path, "curve")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem\n")
    return {
        "cert": server.cert, "key": server.key, "other_key": other.key, "ca": _ca_pair.cert,
        "curve_public": Path(public), "curve_secret": Path(secret), "garbage": garbage,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ({"--tls-cert": "cert"}, "the TLS certificate and key go together (--tls-cert, --tls-key)"),
        ({"--tls-cert": "garbage", "--tls-key": "garbage"}, "need a PEM certificate chain"),
        ({"--tls-cert": "cert", "--tls-key": "other_key"}, "KEY_VALUES_MISMATCH"),
        ({"--tls-cert": "cert", "--tls-key": "key", "--tls-client-ca": "garbage"},
         "not PEM CA certificates"),
        ({"--tls-client-ca": "ca"}, "needs the server's TLS certificate and key (--tls-client-ca"),
        ({"--auth-token-file": "garbage"},
         "16-4096 visible ASCII characters (no spaces, control or non-ASCII characters); "
         "got 7 characters (--auth-token-file)"),
        ({"--engine-curve-server-key": "curve_public"}, "go together"),
        ({"--engine-curve-server-key": "garbage", "--engine-curve-client-key": "curve_secret"},
         "not a zmq.auth CURVE key file"),
        ({"--engine-curve-server-key": "curve_public", "--engine-curve-client-key": "curve_public"},
         "has no secret key"),
        ({"--metrics-port": "-1"}, "x>=0"),
        ({"--auth-token": "x" * 16, "--auth-token-file": "garbage"},
         "give the token once: as a value or as a file (--auth-token, --auth-token-file)"),
    ],
)  # fmt: skip
def test_bad_security_configuration_exits_2_with_one_line(
    flags: dict[str, str], reason: str, files: dict[str, Path],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name in [n for n in os.environ if n.startswith("CONTROL_SERVICE_")]:
        monkeypatch.delenv(name)

    def never(*_: object) -> None:
        raise AssertionError("a bad configuration got as far as serving")

    monkeypatch.setattr(serve.Serve, "run", never)
    argv = ["serve", "--engine", "tcp://127.0.0.1:1"]
    for flag, name in flags.items():
        argv += [flag, str(files[name]) if name in files else name]
    assert app.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err, err


def test_good_security_files_pass(files: dict[str, Path]) -> None:
    security = SecurityConfig(tls_cert=files["cert"], tls_key=files["key"],
                              tls_client_ca=files["ca"])  # fmt: skip
    assert security.tls_client_ca == files["ca"]
    link = LinkConfig(curve_server_key=files["curve_public"],
                      curve_client_key=files["curve_secret"])  # fmt: skip
    assert link.curve_client_key == files["curve_secret"]


def test_config_errors_borrow_no_grpc_code_and_quote_no_flag(tmp_path: Path) -> None:
    """The config layer speaks of fields; only the CLI knows them as flags."""
    cases = [
        lambda: SecurityConfig(tls_cert=tmp_path),
        lambda: SecurityConfig(tls_client_ca=tmp_path),
        lambda: SecurityConfig(auth_token="x" * 16, auth_token_file=tmp_path),
        lambda: LinkConfig(curve_server_key=tmp_path),
        lambda: ServiceConfig(engines=(EngineConfig("a", "tcp://h:1"),), max_timeout_s=1),
        lambda: ServiceConfig(engines=()),
        lambda: EngineConfig("a b", "tcp://h:1"),
    ]
    for build in cases:
        with pytest.raises(ConfigError) as info:
            build()
        assert type(info.value) is ConfigError and not hasattr(info.value, "code")
        assert "--" not in info.value.message, info.value.message
        assert all(field in serve.FLAG_OF_FIELD for field in info.value.fields), info.value.fields
