"""Bearer-token authentication, as a server interceptor: every method but (optionally) health.

The token is compared in constant time (hmac.compare_digest), so response timing does not leak
how much of a guess was right. A refused call gets UNAUTHENTICATED and reaches no handler.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc
import structlog

from control_service.errors import ControlError, to_grpc_status
from control_service.protocol.names import AUTHORIZATION, bearer

log = structlog.get_logger("control_service.server.auth")

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, exempt_health: bool = False) -> None:
        self._expected = bearer(token).encode()
        self._exempt_health = exempt_health
        self._refuse = grpc.unary_unary_rpc_method_handler(_unauthenticated)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if self._exempt_health and method.startswith(HEALTH_PREFIX):
            return await continuation(handler_call_details)
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTHORIZATION:
                presented = value.encode() if isinstance(value, str) else value
                break
        if hmac.compare_digest(presented, self._expected):
            return await continuation(handler_call_details)
        log.warning("call refused: missing or wrong bearer token", method=method)
        return self._refuse


async def _unauthenticated(request: object, context: grpc.aio.ServicerContext) -> None:
    error = ControlError(
        grpc.StatusCode.UNAUTHENTICATED,
        f"missing or wrong '{AUTHORIZATION}: {bearer('<token>')}'",
        reason="UNAUTHENTICATED",
    )
    await context.abort_with_status(to_grpc_status(error))
