"""The one way every command (and engine_stub) runs its event loop: on uvloop when the `fast`
extra is installed, unless told otherwise.

uvloop cut the service's CPU per call by about 8% in bench runs here; the standard loop is the
fallback, so nothing depends on it. `CONTROL_SERVICE_LOOP` (`auto`, `uvloop`, `asyncio`) picks
the loop, so that the standard loop can be run (and tested) on an install that has uvloop: the two
loops differ in what they accept (uvloop rejects `process_group`, for one).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Mapping
from typing import Any, Literal, TypeVar

from control_service.server.config import ConfigError

T = TypeVar("T")
LOOP_ENV = "CONTROL_SERVICE_LOOP"
LOOPS = ("auto", "uvloop", "asyncio")
Loop = Literal["uvloop", "asyncio"]


def loop_choice(environ: Mapping[str, str] | None = None) -> Loop:
    """The loop `run` will use: uvloop if asked or (auto) installed, else the standard loop.
    Raises ConfigError for an unknown name or an absent uvloop asked for."""
    wanted = (os.environ if environ is None else environ).get(LOOP_ENV, "auto").strip() or "auto"
    if wanted not in LOOPS:
        raise ConfigError(f"{LOOP_ENV}={wanted!r}: must be one of {', '.join(LOOPS)}")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ConfigError(f"{LOOP_ENV}=uvloop but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new loop of the chosen kind (ConfigError: not started)."""
    try:
        choice = loop_choice()
    except ConfigError:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    if choice == "asyncio":
        return asyncio.run(main)
    import uvloop

    return uvloop.run(main)
