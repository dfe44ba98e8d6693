"""`python -m engine_stub`: a real engine process for the demo, the tests and the benchmark.

See docs/engine-protocol.md for the wire protocol and server.py for the stdout/stdin interface.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control_service.cli.aio import run as run_loop
from control_service.engine import CurveConfig
from control_service.protocol import wire

from .engine import SimConfig
from .handler import Knobs
from .server import ServerConfig, parse_knobs, run


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that refuses 0 and negatives (a zero token interval would spin)."""

    def check(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return check


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        value = kind(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine_stub", description=__doc__)
    p.add_argument(
        "--bind",
        default="tcp://127.0.0.1:0",
        help="ROUTER endpoint: tcp://HOST:PORT (port 0 = any free port) or ipc:///path",
    )
    p.add_argument("--name", default="engine-stub", help="the engine's name in logs")
    p.add_argument(
        "--curve-secret-key",
        type=Path,
        help="CURVE: this engine's key pair (a zmq.auth .key_secret file); encrypts the link",
    )
    p.add_argument(
        "--curve-allowed-clients",
        type=Path,
        help="CURVE: a folder of client public keys (.key files); others are refused",
    )
    p.add_argument(
        "--no-request-lines",
        dest="announce_requests",
        action="store_false",
        help="do not print a `request` line per request on stdout (the benchmark's peer)",
    )
    p.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper
    )
    sim = p.add_argument_group("simulated load")
    sim.add_argument(
        "--requests",
        type=_non_negative(int),
        default=4,
        help="generation requests kept in flight while serving",
    )
    sim.add_argument("--tokens", type=_positive(int), default=16, help="tokens per request")
    sim.add_argument(
        "--token-interval", type=_positive(float), default=0.005, help="seconds per token"
    )
    sim.add_argument(
        "--load-interval",
        type=_non_negative(float),
        default=0.0,
        help="extra seconds per checkpoint file loaded (a slow disk)",
    )
    sim.add_argument(
        "--max-staged-bytes",
        type=_positive(int),
        default=1 << 30,
        help="the staging area's bound: stage_weights of a larger checkpoint is refused",
    )
    knobs = p.add_argument_group("test knobs (also settable as JSON lines on stdin)")
    knobs.add_argument(
        "--reply-delay",
        type=float,
        default=0.0,
        help="wait this many seconds before sending each reply",
    )
    knobs.add_argument(
        "--instant",
        action="store_true",
        help="answer every operation at once with a result (benchmark peer)",
    )
    knobs.add_argument(
        "--fail-next",
        metavar="CODE",
        choices=sorted(wire.ERROR_CODES),
        help="the next pause/update_weights/resume fails with this gRPC status",
    )
    knobs.add_argument("--silent", action="store_true", help="receive requests, never reply")
    args = p.parse_args(argv)
    if args.curve_allowed_clients is not None and args.curve_secret_key is None:
        p.error("--curve-allowed-clients needs --curve-secret-key")
    args.curve = None
    if args.curve_secret_key is not None:
        try:  # the library's own checks, as one line
            args.curve = CurveConfig(args.curve_secret_key, args.curve_allowed_clients)
        except ValueError as err:
            p.error(f"--curve-secret-key/--curve-allowed-clients: {err}")
    args.knobs = _knobs(p, args)
    return args  # fmt: skip


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        bind=args.bind,
        name=args.name,
        curve=args.curve,
        sim=SimConfig(
            args.requests,
            args.tokens,
            args.token_interval,
            args.load_interval,
            args.max_staged_bytes,
        ),  # fmt: skip
        knobs=args.knobs,
        announce_requests=args.announce_requests,
    )


def _knobs(p: argparse.ArgumentParser, args: argparse.Namespace) -> Knobs:
    """The knob flags, checked by the same parser as knob lines on stdin."""
    line: dict[str, object] = {"reply_delay": args.reply_delay, "instant": args.instant,
                               "silent": args.silent}  # fmt: skip
    if args.fail_next:
        line["fail_next"] = {"code": args.fail_next}
    try:
        knobs = parse_knobs(line)
    except ValueError as err:
        p.error(str(err))
    fail = knobs.get("fail_next")
    return Knobs(
        reply_delay=knobs["reply_delay"],
        instant=knobs["instant"],
        silent=knobs["silent"],
        fail_next=(fail["code"], fail["message"]) if fail else None,
        fail_method=fail.get("method") if fail else None,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse flags, log to stderr, serve until SIGTERM/SIGINT; the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s [{args.name}] %(message)s",
    )
    return run_loop(run(config_from(args)))


if __name__ == "__main__":
    sys.exit(main())
