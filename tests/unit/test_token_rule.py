"""One rule for the bearer token, whichever its source: flag, environment (both arrive as
SecurityConfig.auth_token) or file. A token nobody can send is refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_service.server.config import ConfigError, SecurityConfig

GOOD = "s3cret-token-0123456789"


def config(source: str, text: str, tmp_path: Path) -> SecurityConfig:
    if source == "file":
        path = tmp_path / "token"
        path.write_bytes(text.encode())
        return SecurityConfig(auth_token_file=path)
    return SecurityConfig(auth_token=text)


@pytest.mark.parametrize("source", ["flag-or-env", "file"])
@pytest.mark.parametrize("text", [GOOD, f"  {GOOD}\n", f"{GOOD}\r\n", f"\t{GOOD} "])
def test_surrounding_whitespace_is_dropped_from_every_source(
    source: str, text: str, tmp_path: Path
) -> None:
    assert config(source, text, tmp_path).token() == GOOD


@pytest.mark.parametrize("source", ["flag-or-env", "file"])
@pytest.mark.parametrize(
    "text",
    ["short", "with a space inside 0123", "tok\u00e9n-0123456789-abc", "line\nbreak-0123456789",
     "nul\x00char-0123456789", "x" * 4097],
)  # fmt: skip
def test_a_token_nobody_could_send_is_refused_from_every_source(
    source: str, text: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        config(source, text, tmp_path).token()
    assert "visible ASCII" in info.value.message
    assert text.strip() not in info.value.message, "the token is never echoed"
