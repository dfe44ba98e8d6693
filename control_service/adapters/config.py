"""An adapter's configuration: which engine, where it is, where the adapter listens, its bounds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ENGINES = ("vllm", "sglang", "fastdeploy")


class ConfigError(ValueError):
    """Bad adapter configuration: the command line turns it into exit 2 and one line."""


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """`url`: the engine's HTTP base URL (http://127.0.0.1:8000). `bind`: the adapter's ZMQ
    ROUTER (tcp://0.0.0.0:5560). Per-step timeouts cap one engine request within the call's own
    deadline (None: only the deadline); `status_timeout_s` bounds every state read."""

    engine: str
    url: str
    bind: str
    name: str = ""
    api_key_file: Path | None = None
    status_timeout_s: float = 2.0
    connect_timeout_s: float = 2.0
    pause_timeout_s: float | None = None
    load_timeout_s: float | None = None
    resume_timeout_s: float | None = None
    progress_interval_s: float = 1.0
    max_response_bytes: int = 1 << 20
    retries: int = 2
    curve_secret_key: Path | None = None
    curve_allowed_clients: Path | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(f"url must be http(s)://HOST:PORT, got {self.url!r}")
        if not self.bind.startswith(("tcp://", "ipc://")):
            raise ConfigError(f"bind must be tcp://HOST:PORT or ipc:///path, got {self.bind!r}")
        for field in ("status_timeout_s", "connect_timeout_s", "progress_interval_s"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"{field} must be > 0")
        for field in ("pause_timeout_s", "load_timeout_s", "resume_timeout_s"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ConfigError(f"{field} must be > 0")
        if not 1024 <= self.max_response_bytes <= 64 << 20:
            raise ConfigError("max_response_bytes must be within 1 KiB..64 MiB")
        if not 0 <= self.retries <= 3:
            raise ConfigError("retries must be within 0..3")
        if self.curve_allowed_clients is not None and self.curve_secret_key is None:
            raise ConfigError("curve_allowed_clients needs curve_secret_key")

    @property
    def server_name(self) -> str:
        return self.name or f"{self.engine}-adapter"

    def api_key(self) -> str | None:
        """The engine's API key, read from its file (never from the command line)."""
        if self.api_key_file is None:
            return None
        try:
            key = self.api_key_file.read_text().strip()
        except OSError as err:
            raise ConfigError(f"cannot read the API key file {self.api_key_file}: {err}") from None
        if not key or len(key) > 4096 or any(c.isspace() for c in key):
            raise ConfigError(f"the API key file {self.api_key_file} must hold one key")
        return key
