"""`control-service`: serve the control plane, call it, check its health, or run a demo.

Every command is a click command in its own module whose callback only parses: it returns a
plan (a frozen dataclass with `async run(out, err) -> int`), and `run_command` runs every plan
the same way: one event loop (aio.run), one place that turns errors into exit codes and one
line on stderr. Adding a command is one module with a `command` and one line in COMMANDS.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Protocol, TextIO

import click

from control_service.cli import adapt, aio, call, demo, exit_codes, healthcheck, serve
from control_service.cli.params import CONTEXT
from control_service.cli.render import printable
from control_service.server.config import ConfigError

COMMANDS: tuple[click.Command, ...] = (serve.command, call.command, demo.command,
                                        healthcheck.command, adapt.command)  # fmt: skip


class Plan(Protocol):
    """What a command's callback returns: everything checked, nothing started yet."""

    async def run(self, out: TextIO, err: TextIO) -> int: ...


@click.group(
    "control-service",
    context_settings={**CONTEXT, "auto_envvar_prefix": None},
    epilog="Configuration flags also read CONTROL_SERVICE_<FLAG> (flags win); "
    "CONTROL_SERVICE_LOOP=auto|uvloop|asyncio picks the event loop. " + exit_codes.HELP,
)
def root() -> None:
    """gRPC control plane between RL trainers and LLM inference engines."""


for _command in COMMANDS:
    root.add_command(_command)


def parse(
    argv: Sequence[str] | None, command: click.Command = root, prog: str = "control-service"
) -> Plan | int:
    """The plan the command line describes, or the exit code of --help (click's own errors
    propagate: run_command reports them)."""
    result = command.main(list(argv) if argv is not None else None, prog_name=prog,
                          standalone_mode=False)  # fmt: skip
    return result if result is not None else exit_codes.OK


def run_command(
    command: click.Command = root,
    argv: Sequence[str] | None = None,
    *,
    prog: str = "control-service",
    usage_exit: int = exit_codes.USAGE,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Parse, run the plan on the event loop, and map the outcome to an exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        plan = parse(argv, command, prog)
        if isinstance(plan, int):
            return plan
        return aio.run(plan.run(out, err))
    except click.exceptions.NoArgsIsHelpError as error:  # a group without its command
        err.write(error.format_message() + "\n")
        return usage_exit
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx else prog
        err.write(f"{where}: error: {printable(error.format_message())}\n")
        return usage_exit
    except ConfigError as error:  # e.g. CONTROL_SERVICE_LOOP, read as the loop starts
        err.write(f"{prog}: error: {printable(error.message)}\n")
        return usage_exit
    except click.ClickException as error:  # e.g. a file it could not open
        err.write(f"{prog}: error: {printable(error.format_message())}\n")
        return usage_exit
    except click.exceptions.Abort:  # click's word for Ctrl-C while it was parsing
        err.write("interrupted\n")
        return exit_codes.INTERRUPTED
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return exit_codes.INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `control-service` script and `python -m control_service`."""
    return run_command(root, argv)


if __name__ == "__main__":
    sys.exit(main())
