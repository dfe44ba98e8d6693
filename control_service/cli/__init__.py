"""`control-service`: the operator's and the shell user's entry point (serve, call, demo, ...)."""

from control_service.cli.app import main

__all__ = ["main"]
