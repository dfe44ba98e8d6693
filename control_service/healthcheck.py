"""`python -m control_service.healthcheck`: exit 0 when the service reports SERVING.

For the container's HEALTHCHECK, where grpcurl is not installed. It asks the standard
grpc.health.v1 service, so it sees exactly what Kubernetes' gRPC probe sees.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def check(target: str, service: str, timeout: float) -> bool:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--target", default=os.environ.get("CONTROL_SERVICE_HEALTH_TARGET", "127.0.0.1:50051")
    )
    parser.add_argument("--service", default="control.v1.ControlService")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        serving = asyncio.run(check(args.target, args.service, args.timeout))
    except grpc.RpcError as err:
        print(f"unhealthy: {err.code().name}: {err.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
