"""Adapters: one process beside each real engine (vLLM, SGLang, FastDeploy) that speaks the engine
protocol on a ZMQ ROUTER and drives the engine's own HTTP admin API (docs/adapters.md).

Built on the engine library (control_service.engine) and an HTTP client only; the service never
imports this package. `run_adapter(AdapterConfig(...))` is the one entry point.
"""

from control_service.adapters.config import ENGINES, AdapterConfig, ConfigError

__all__ = ["ENGINES", "AdapterConfig", "ConfigError", "run_adapter"]


def run_adapter(config: AdapterConfig) -> int:
    """Run one adapter until SIGTERM/SIGINT; returns the process exit code."""
    from control_service.adapters.run import run_adapter as run

    return run(config)
