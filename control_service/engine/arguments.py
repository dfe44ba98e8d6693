"""The argument checks of the mutations, done before a mutation may start.

Apart from the server because they are a table of rules, not a duty of the protocol's flow: a
mutation whose arguments break one is refused (INVALID_ARGUMENT, or UNIMPLEMENTED when this
engine lacks the pause mode or cannot stage) without the handler ever being called, so a
handler may take its arguments as checked.
"""

from __future__ import annotations

from control_service.protocol import names, wire

from .handler import EngineError, EngineHandler, can_stage, clip


def check_args(handler: EngineHandler, request: wire.Request) -> EngineError | None:
    args = request.args
    if request.method == "pause":
        mode = args.get("mode")
        if not isinstance(mode, str) or mode not in wire.PAUSE_MODES:
            got = clip(repr(mode))
            return EngineError("INVALID_ARGUMENT", f"mode must be abort, wait or keep: {got}")
        if mode not in handler.capabilities().pause_modes:
            return EngineError("UNIMPLEMENTED", f"this engine has no pause mode {mode}")
        if not isinstance(args.get("clear_cache", False), bool):
            return EngineError("INVALID_ARGUMENT", "clear_cache must be a boolean")
    elif request.method in (names.UPDATE_WEIGHTS, names.STAGE_WEIGHTS):
        for key in ("uri", "version"):
            value = args.get(key)
            if not isinstance(value, str) or not 0 < len(value) <= wire.MAX_TEXT_CHARS:
                message = f"{key} must be a string of 1-{wire.MAX_TEXT_CHARS} characters"
                return EngineError("INVALID_ARGUMENT", message)
        staged = args.get(names.STAGED, False)
        if not isinstance(staged, bool):
            return EngineError("INVALID_ARGUMENT", f"{names.STAGED} must be a boolean")
        stages = request.method == names.STAGE_WEIGHTS or staged
        if stages and not can_stage(handler):
            return EngineError("UNIMPLEMENTED", "this engine cannot stage weights")
    return None
