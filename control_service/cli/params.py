"""The parameter kinds the commands share, on click.

Flags read CONTROL_SERVICE_<FLAG> through click's `auto_envvar_prefix` (each command sets it,
so the variable is the flag's name, never prefixed by the command's); `--help` shows it. Per-call
arguments (request id, engine names, pause mode, ...) are declared with `per_call=True` and are
never read from the environment: a stale variable must not silently reuse a request id or narrow
a call.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import click
from click.core import ParameterSource

from control_service.server.config import ConfigError

ENV_PREFIX = "CONTROL_SERVICE"
CONTEXT = {
    "auto_envvar_prefix": ENV_PREFIX,
    "show_default": True,
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
}

POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
NON_NEGATIVE_FLOAT = click.FloatRange(min=0)
POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)


class EnvOption(click.Option):
    """An option whose bad value from the environment is reported under the variable's name."""

    def handle_parse_result(
        self, ctx: click.Context, opts: Mapping[str, Any], args: list[str]
    ) -> Any:
        try:
            return super().handle_parse_result(ctx, opts, args)
        except click.BadParameter as error:
            if self.name and ctx.get_parameter_source(self.name) == ParameterSource.ENVIRONMENT:
                error.param_hint = f"{self._env_name(ctx)} (for {self.opts[0]})"
            raise

    def _env_name(self, ctx: click.Context) -> str | None:
        if self.envvar:
            return self.envvar if isinstance(self.envvar, str) else self.envvar[0]
        if ctx.auto_envvar_prefix and self.name:
            return f"{ctx.auto_envvar_prefix}_{self.name.upper()}"
        return None


def option(*decls: str, per_call: bool = False, **attrs: Any) -> Callable[[Any], Any]:
    """click.option with the variable shown in --help (none for per-call arguments)."""
    return click.option(
        *decls, cls=EnvOption, allow_from_autoenv=not per_call, show_envvar=not per_call, **attrs
    )


def with_options(options: Sequence[Callable[[Any], Any]], function: Any) -> Any:
    """`function` decorated with `options`, first option first in --help."""
    for decorate in reversed(options):
        function = decorate(function)
    return function


class ListenAddress(click.ParamType):
    """HOST:PORT (port 0: any), [IPv6]:PORT, or unix:PATH: caught here rather than at bind."""

    name = "HOST:PORT"

    def __init__(self, optional: bool = False) -> None:
        self.optional = optional  # "" means none

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if (self.optional and not text) or text.startswith("unix:"):
            return text
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            self.fail(f"{text!r} is not HOST:PORT", param, ctx)
        return text


class Words(click.ParamType):
    """A shell-quoted argument string as a list (for arguments passed through to engines)."""

    name = "ARGS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple | list):
            return tuple(value)
        try:
            return tuple(shlex.split(value))
        except ValueError as error:
            self.fail(f"{value!r}: {error}", param, ctx)


class CommaList(click.ParamType):
    """A repeatable flag's value; its variable holds several, separated by commas or spaces."""

    def __init__(self, metavar: str) -> None:
        self.name = metavar

    def split_envvar_value(self, rv: str) -> list[str]:
        return rv.replace(",", " ").split()


@contextlib.contextmanager
def config_errors(flags: Mapping[str, str]) -> Iterator[None]:
    """A ConfigError as a usage error (exit 2, one line), naming the flags of its fields."""
    try:
        yield
    except ConfigError as error:
        named = [flags[f] for f in error.fields if f in flags]
        where = f" ({', '.join(named)})" if named else ""
        raise click.UsageError(error.message + where) from None
