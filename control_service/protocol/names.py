"""Every word both sides share, defined once: methods, pause modes, refit policies, the request_id
rule, engine error codes, bearer metadata.

The trainer's client, the service, the CLI and the engines all spell these words; when each kept
its own copy they drifted (the request_id pattern was anchored one way on the client and another
on the server). Plain strings and one regular expression, so an engine can import this without
loading gRPC or protobuf. The proto enums that carry some of these words on the gRPC side are
mapped to them in `protocol/proto_enums.py`.
"""

from __future__ import annotations

import re
from typing import Final, Literal

# --------------------------------------------------------------------------- engine methods

PAUSE: Final = "pause"
UPDATE_WEIGHTS: Final = "update_weights"
RESUME: Final = "resume"
STATUS: Final = "status"
CANCEL: Final = "cancel"
# Loads a checkpoint beside the served weights while the engine keeps serving; an update_weights
# of the staged version then commits it (a swap under the pause) instead of loading again.
STAGE_WEIGHTS: Final = "stage_weights"
# What an engine answers on the ZMQ link (docs/engine-protocol.md).
ENGINE_METHODS: Final = frozenset({PAUSE, UPDATE_WEIGHTS, RESUME, STATUS, CANCEL, STAGE_WEIGHTS})
# The calls that change an engine: one at a time per engine.
MUTATIONS: Final = (PAUSE, UPDATE_WEIGHTS, RESUME, STAGE_WEIGHTS)
# update_weights' flag: commit the staged `version` only, never load (FAILED_PRECONDITION if
# that version is not the one staged, say because another stage replaced it).
STAGED: Final = "staged"
# The capability (a yes/no flag in a status result's capabilities) of an engine that can stage.
CAP_STAGE: Final = "stage"
# The service's own composite call (pause -> update_weights -> resume); never sent to an engine.
REFIT: Final = "refit"

# ------------------------------------------------------------------------------ pause modes

PauseMode = Literal["abort", "wait", "keep"]
ABORT: Final = "abort"  # drop in-flight generation now
WAIT: Final = "wait"  # let in-flight generation finish, then pause
KEEP: Final = "keep"  # hold in-flight generation, continue it on resume
PAUSE_MODES: Final[tuple[PauseMode, ...]] = (ABORT, WAIT, KEEP)

# --------------------------------------------------------------------------- refit policies

RefitPolicy = Literal["resume_old_weights", "stay_paused"]
RESUME_OLD_WEIGHTS: Final = "resume_old_weights"
STAY_PAUSED: Final = "stay_paused"
REFIT_POLICIES: Final[tuple[RefitPolicy, ...]] = (RESUME_OLD_WEIGHTS, STAY_PAUSED)

# ------------------------------------------------------------------- failed engines' actions

# What the service did with an engine that failed its part of a call (the proto's FailureAction).
FailureAction = Literal[
    "left_as_reported", "resumed_old_weights", "resumed_new_weights", "left_paused",
    "resume_failed", "not_paused",
]  # fmt: skip
LEFT_AS_REPORTED: Final = "left_as_reported"  # Pause / UpdateWeights / Resume: nothing
RESUMED_OLD_WEIGHTS: Final = "resumed_old_weights"  # Refit policy: serving its old weights
RESUMED_NEW_WEIGHTS: Final = "resumed_new_weights"  # Refit: only its resume failed, then it did
LEFT_PAUSED: Final = "left_paused"  # Refit, STAY_PAUSED
RESUME_FAILED: Final = "resume_failed"  # Refit policy: could not resume it
NOT_PAUSED: Final = "not_paused"  # Refit with stage: staging failed before any pause
FAILURE_ACTIONS: Final[tuple[FailureAction, ...]] = (
    LEFT_AS_REPORTED, RESUMED_OLD_WEIGHTS, RESUMED_NEW_WEIGHTS, LEFT_PAUSED, RESUME_FAILED,
    NOT_PAUSED,
)  # fmt: skip

# ------------------------------------------------------------------------------- request_id

MAX_REQUEST_ID_CHARS: Final = 128
# Matched with `fullmatch` (one anchoring, everywhere). '/' is left out on purpose: the service
# makes its own ids with it (a refit's steps, status probes), so they never collide with a caller's.
REQUEST_ID: Final = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}")
REQUEST_ID_RULE: Final = f"1-{MAX_REQUEST_ID_CHARS} characters of letters, digits and . _ : -"


def is_request_id(value: str) -> bool:
    """Whether a caller's request_id has the documented shape."""
    return REQUEST_ID.fullmatch(value) is not None


# ----------------------------------------------------------------------- engine error codes

# gRPC status names an engine may put in an error reply (every one but OK).
ERROR_CODES: Final = frozenset(
    {
        "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)  # fmt: skip

# ------------------------------------------------------------------------- bearer metadata

AUTHORIZATION: Final = "authorization"  # gRPC metadata keys are lower case


def bearer(token: str) -> str:
    """The `authorization` metadata value that carries `token`."""
    return f"Bearer {token}"


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Per-call metadata for a client: the bearer token, or None when there is none."""
    return ((AUTHORIZATION, bearer(token)),) if token else None
