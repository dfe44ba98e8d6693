"""`python -m control_service.adapters vllm|sglang|fastdeploy --url URL --bind ENDPOINT [...]`
(also `control-service adapt ...`, which passes its arguments here). Exit 2 on bad usage."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from control_service.adapters.config import ENGINES, AdapterConfig, ConfigError
from control_service.adapters.run import run_adapter


def parser(prog: str = "python -m control_service.adapters") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Drive one engine through its HTTP admin API, speaking the engine protocol "
        "on a ZMQ ROUTER for control-service. Run it beside the engine (same pod).",
    )
    p.add_argument("engine", choices=ENGINES)
    p.add_argument(
        "--url", required=True, help="the engine's HTTP base URL (http://127.0.0.1:8000)"
    )
    p.add_argument("--bind", required=True, help="the adapter's endpoint (tcp://0.0.0.0:5560)")
    p.add_argument("--name", default="", help="a name for logs (default: ENGINE-adapter)")
    p.add_argument("--api-key-file", type=Path, help="the engine's API key (SGLang --api-key)")
    p.add_argument("--status-timeout", type=float, default=2.0, metavar="S",
                   help="bound of each state read (default 2)")  # fmt: skip
    p.add_argument("--connect-timeout", type=float, default=2.0, metavar="S")
    for step in ("pause", "load", "resume"):
        p.add_argument(f"--{step}-timeout", type=float, default=None, metavar="S",
                       help=f"cap of the {step} request within the call's deadline")  # fmt: skip
    p.add_argument("--progress-interval", type=float, default=1.0, metavar="S",
                   help="how often a long step reports progress (default 1)")  # fmt: skip
    p.add_argument("--curve-secret-key", type=Path, help="this adapter's CURVE key pair file")
    p.add_argument("--curve-allowed-clients", type=Path, help="folder of allowed client keys")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def config_from(args: argparse.Namespace) -> AdapterConfig:
    return AdapterConfig(
        engine=args.engine,
        url=args.url,
        bind=args.bind,
        name=args.name,
        api_key_file=args.api_key_file,
        status_timeout_s=args.status_timeout,
        connect_timeout_s=args.connect_timeout,
        pause_timeout_s=args.pause_timeout,
        load_timeout_s=args.load_timeout,
        resume_timeout_s=args.resume_timeout,
        progress_interval_s=args.progress_interval,
        curve_secret_key=args.curve_secret_key,
        curve_allowed_clients=args.curve_allowed_clients,
    )


def prepare(argv: Sequence[str] | None, prog: str | None = None) -> AdapterConfig:
    """Parse (argparse exits 2 on bad usage, 0 on --help), set up logging, and check the
    configuration: ConfigError names what is wrong."""
    args = (parser(prog) if prog else parser()).parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    config = config_from(args)
    config.api_key()  # a bad key file stops the start here, with its reason
    return config


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    try:
        config = prepare(argv, prog)
    except ConfigError as err:
        print(f"{prog or parser().prog}: error: {err}", file=sys.stderr)
        return 2
    return run_adapter(config)


if __name__ == "__main__":
    sys.exit(main())
