"""The package's public surface: the client, re-exported, loaded only when asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

import control_service
from control_service import client


def test_the_client_is_reexported() -> None:
    assert control_service.__all__ == client.__all__
    for name in control_service.__all__:
        assert getattr(control_service, name) is getattr(client, name)
    assert set(control_service.__all__) <= set(dir(control_service))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        control_service.Nope  # noqa: B018


def test_importing_the_engine_protocol_does_not_load_grpc() -> None:
    code = "import sys, control_service.protocol.wire; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
