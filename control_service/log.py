"""structlog set-up: JSON lines for log pipelines, readable lines on a terminal.

Loggers are filtering bound loggers, so a level that is off costs one method call: that keeps
debug logging out of the reply path's cost.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure(level: str = "info", json: bool | None = None) -> None:
    """json=None: JSON unless stderr is a terminal."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def few_names(names: Sequence[str], limit: int = 16) -> str:
    """Engine names for a log line: a call to, or a fleet of, thousands of engines stays one
    short line (the first `limit` names and a count of the rest)."""
    shown = ",".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
