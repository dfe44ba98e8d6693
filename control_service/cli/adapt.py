"""`control-service adapt vllm|sglang|fastdeploy --url URL --bind ENDPOINT ...`: a thin wrapper
over `python -m control_service.adapters` (every argument, --help included, is the adapter's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import click

from control_service.adapters import AdapterConfig, ConfigError


@dataclass(frozen=True, slots=True)
class AdaptPlan:
    config: AdapterConfig

    async def run(self, out: TextIO, err: TextIO) -> int:
        from control_service.adapters.run import serve

        return await serve(self.config)


@click.command(
    "adapt",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    short_help="drive a vLLM, SGLang or FastDeploy engine (run beside it)",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args: Sequence[str]) -> AdaptPlan:
    """Drive one engine through its HTTP admin API (`control-service adapt --help`)."""
    from control_service.adapters.__main__ import prepare

    try:
        return AdaptPlan(prepare(list(args), prog="control-service adapt"))
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
