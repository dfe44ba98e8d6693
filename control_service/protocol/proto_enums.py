"""The proto's enums as the shared words of `names.py`, both ways, for the client and the service.

One table per enum, so a mode or policy added to the proto and to `names.py` is mapped for both
sides at once. The UNSPECIFIED values are not in the tables: each side decides what "none given"
means (the client sends it for "the server's default"; the service applies its default).
"""

from __future__ import annotations

from typing import Final

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import names

PAUSE_MODE_VALUES: Final[dict[str, pb.PauseMode]] = {
    names.ABORT: pb.PAUSE_MODE_ABORT,
    names.WAIT: pb.PAUSE_MODE_WAIT,
    names.KEEP: pb.PAUSE_MODE_KEEP,
}
PAUSE_MODE_NAMES: Final[dict[int, str]] = {v: k for k, v in PAUSE_MODE_VALUES.items()}

REFIT_POLICY_VALUES: Final[dict[str, pb.RefitFailurePolicy]] = {
    names.RESUME_OLD_WEIGHTS: pb.REFIT_FAILURE_POLICY_RESUME_OLD_WEIGHTS,
    names.STAY_PAUSED: pb.REFIT_FAILURE_POLICY_STAY_PAUSED,
}
REFIT_POLICY_NAMES: Final[dict[int, str]] = {v: k for k, v in REFIT_POLICY_VALUES.items()}

FAILURE_ACTION_VALUES: Final[dict[str, pb.FailureAction]] = {
    names.LEFT_AS_REPORTED: pb.FAILURE_ACTION_LEFT_AS_REPORTED,
    names.RESUMED_OLD_WEIGHTS: pb.FAILURE_ACTION_RESUMED_OLD_WEIGHTS,
    names.RESUMED_NEW_WEIGHTS: pb.FAILURE_ACTION_RESUMED_NEW_WEIGHTS,
    names.LEFT_PAUSED: pb.FAILURE_ACTION_LEFT_PAUSED,
    names.RESUME_FAILED: pb.FAILURE_ACTION_RESUME_FAILED,
    names.NOT_PAUSED: pb.FAILURE_ACTION_NOT_PAUSED,
}
FAILURE_ACTION_NAMES: Final[dict[int, str]] = {v: k for k, v in FAILURE_ACTION_VALUES.items()}
