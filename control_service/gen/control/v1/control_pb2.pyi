import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PauseMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAUSE_MODE_UNSPECIFIED: _ClassVar[PauseMode]
    PAUSE_MODE_ABORT: _ClassVar[PauseMode]
    PAUSE_MODE_WAIT: _ClassVar[PauseMode]
    PAUSE_MODE_KEEP: _ClassVar[PauseMode]

class FailureAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_ACTION_UNSPECIFIED: _ClassVar[FailureAction]
    FAILURE_ACTION_LEFT_AS_REPORTED: _ClassVar[FailureAction]
    FAILURE_ACTION_RESUMED_OLD_WEIGHTS: _ClassVar[FailureAction]
    FAILURE_ACTION_RESUMED_NEW_WEIGHTS: _ClassVar[FailureAction]
    FAILURE_ACTION_LEFT_PAUSED: _ClassVar[FailureAction]
    FAILURE_ACTION_RESUME_FAILED: _ClassVar[FailureAction]
    FAILURE_ACTION_NOT_PAUSED: _ClassVar[FailureAction]

class EngineSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENGINE_SOURCE_UNSPECIFIED: _ClassVar[EngineSource]
    ENGINE_SOURCE_FLAG: _ClassVar[EngineSource]
    ENGINE_SOURCE_FILE: _ClassVar[EngineSource]
    ENGINE_SOURCE_DNS: _ClassVar[EngineSource]

class RefitFailurePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFIT_FAILURE_POLICY_UNSPECIFIED: _ClassVar[RefitFailurePolicy]
    REFIT_FAILURE_POLICY_RESUME_OLD_WEIGHTS: _ClassVar[RefitFailurePolicy]
    REFIT_FAILURE_POLICY_STAY_PAUSED: _ClassVar[RefitFailurePolicy]
PAUSE_MODE_UNSPECIFIED: PauseMode
PAUSE_MODE_ABORT: PauseMode
PAUSE_MODE_WAIT: PauseMode
PAUSE_MODE_KEEP: PauseMode
FAILURE_ACTION_UNSPECIFIED: FailureAction
FAILURE_ACTION_LEFT_AS_REPORTED: FailureAction
FAILURE_ACTION_RESUMED_OLD_WEIGHTS: FailureAction
FAILURE_ACTION_RESUMED_NEW_WEIGHTS: FailureAction
FAILURE_ACTION_LEFT_PAUSED: FailureAction
FAILURE_ACTION_RESUME_FAILED: FailureAction
FAILURE_ACTION_NOT_PAUSED: FailureAction
ENGINE_SOURCE_UNSPECIFIED: EngineSource
ENGINE_SOURCE_FLAG: EngineSource
ENGINE_SOURCE_FILE: EngineSource
ENGINE_SOURCE_DNS: EngineSource
REFIT_FAILURE_POLICY_UNSPECIFIED: RefitFailurePolicy
REFIT_FAILURE_POLICY_RESUME_OLD_WEIGHTS: RefitFailurePolicy
REFIT_FAILURE_POLICY_STAY_PAUSED: RefitFailurePolicy

class PauseRequest(_message.Message):
    __slots__ = ("request_id", "mode", "clear_cache", "timeout", "engines", "max_failed_engines")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CLEAR_CACHE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILED_ENGINES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    mode: PauseMode
    clear_cache: bool
    timeout: _duration_pb2.Duration
    engines: _containers.RepeatedScalarFieldContainer[str]
    max_failed_engines: int
    def __init__(self, request_id: _Optional[str] = ..., mode: _Optional[_Union[PauseMode, str]] = ..., clear_cache: _Optional[bool] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., engines: _Optional[_Iterable[str]] = ..., max_failed_engines: _Optional[int] = ...) -> None: ...

class UpdateWeightsRequest(_message.Message):
    __slots__ = ("request_id", "uri", "version", "timeout", "engines", "max_failed_engines")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILED_ENGINES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    uri: str
    version: str
    timeout: _duration_pb2.Duration
    engines: _containers.RepeatedScalarFieldContainer[str]
    max_failed_engines: int
    def __init__(self, request_id: _Optional[str] = ..., uri: _Optional[str] = ..., version: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., engines: _Optional[_Iterable[str]] = ..., max_failed_engines: _Optional[int] = ...) -> None: ...

class StageWeightsRequest(_message.Message):
    __slots__ = ("request_id", "uri", "version", "timeout", "engines", "max_failed_engines")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILED_ENGINES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    uri: str
    version: str
    timeout: _duration_pb2.Duration
    engines: _containers.RepeatedScalarFieldContainer[str]
    max_failed_engines: int
    def __init__(self, request_id: _Optional[str] = ..., uri: _Optional[str] = ..., version: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., engines: _Optional[_Iterable[str]] = ..., max_failed_engines: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("request_id", "timeout", "engines", "max_failed_engines")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILED_ENGINES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    timeout: _duration_pb2.Duration
    engines: _containers.RepeatedScalarFieldContainer[str]
    max_failed_engines: int
    def __init__(self, request_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., engines: _Optional[_Iterable[str]] = ..., max_failed_engines: _Optional[int] = ...) -> None: ...

class ControlEvent(_message.Message):
    __slots__ = ("request_id", "step", "engine", "seq", "accepted", "progress", "result", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    step: str
    engine: str
    seq: int
    accepted: Accepted
    progress: Progress
    result: Result
    error: EngineError
    def __init__(self, request_id: _Optional[str] = ..., step: _Optional[str] = ..., engine: _Optional[str] = ..., seq: _Optional[int] = ..., accepted: _Optional[_Union[Accepted, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., error: _Optional[_Union[EngineError, _Mapping]] = ...) -> None: ...

class EngineError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "done", "total", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    message: str
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("state", "message", "aborted", "drained", "bytes_loaded", "paused_ms", "failure")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    BYTES_LOADED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_MS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    state: EngineState
    message: str
    aborted: int
    drained: int
    bytes_loaded: int
    paused_ms: float
    failure: EngineFailure
    def __init__(self, state: _Optional[_Union[EngineState, _Mapping]] = ..., message: _Optional[str] = ..., aborted: _Optional[int] = ..., drained: _Optional[int] = ..., bytes_loaded: _Optional[int] = ..., paused_ms: _Optional[float] = ..., failure: _Optional[_Union[EngineFailure, _Mapping]] = ...) -> None: ...

class EngineFailure(_message.Message):
    __slots__ = ("step", "code", "message", "action", "request_id")
    STEP_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    step: str
    code: str
    message: str
    action: FailureAction
    request_id: str
    def __init__(self, step: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., action: _Optional[_Union[FailureAction, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class EngineState(_message.Message):
    __slots__ = ("paused", "weight_version", "in_flight", "weight_digest", "staged_version", "staged_bytes")
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STAGED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGED_BYTES_FIELD_NUMBER: _ClassVar[int]
    paused: bool
    weight_version: str
    in_flight: int
    weight_digest: str
    staged_version: str
    staged_bytes: int
    def __init__(self, paused: _Optional[bool] = ..., weight_version: _Optional[str] = ..., in_flight: _Optional[int] = ..., weight_digest: _Optional[str] = ..., staged_version: _Optional[str] = ..., staged_bytes: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("engines",)
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, engines: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("engines", "skewed_engines", "membership_generation")
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    SKEWED_ENGINES_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_GENERATION_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedCompositeFieldContainer[EngineStatus]
    skewed_engines: _containers.RepeatedScalarFieldContainer[str]
    membership_generation: int
    def __init__(self, engines: _Optional[_Iterable[_Union[EngineStatus, _Mapping]]] = ..., skewed_engines: _Optional[_Iterable[str]] = ..., membership_generation: _Optional[int] = ...) -> None: ...

class EngineStatus(_message.Message):
    __slots__ = ("engine", "reachable", "state", "error", "expected_version", "capabilities", "failure", "source", "leaving")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    engine: str
    reachable: bool
    state: EngineState
    error: str
    expected_version: str
    capabilities: EngineCapabilities
    failure: EngineFailure
    source: EngineSource
    leaving: bool
    def __init__(self, engine: _Optional[str] = ..., reachable: _Optional[bool] = ..., state: _Optional[_Union[EngineState, _Mapping]] = ..., error: _Optional[str] = ..., expected_version: _Optional[str] = ..., capabilities: _Optional[_Union[EngineCapabilities, _Mapping]] = ..., failure: _Optional[_Union[EngineFailure, _Mapping]] = ..., source: _Optional[_Union[EngineSource, str]] = ..., leaving: _Optional[bool] = ...) -> None: ...

class EngineCapabilities(_message.Message):
    __slots__ = ("pause_modes", "cancel", "progress", "flags")
    class FlagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    PAUSE_MODES_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    pause_modes: _containers.RepeatedScalarFieldContainer[PauseMode]
    cancel: bool
    progress: bool
    flags: _containers.ScalarMap[str, bool]
    def __init__(self, pause_modes: _Optional[_Iterable[_Union[PauseMode, str]]] = ..., cancel: _Optional[bool] = ..., progress: _Optional[bool] = ..., flags: _Optional[_Mapping[str, bool]] = ...) -> None: ...

class RefitRequest(_message.Message):
    __slots__ = ("request_id", "mode", "clear_cache", "uri", "version", "timeout", "pause_timeout", "update_timeout", "resume_timeout", "on_failure", "engines", "stage", "stage_timeout", "max_failed_engines")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CLEAR_CACHE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PAUSE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESUME_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILED_ENGINES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    mode: PauseMode
    clear_cache: bool
    uri: str
    version: str
    timeout: _duration_pb2.Duration
    pause_timeout: _duration_pb2.Duration
    update_timeout: _duration_pb2.Duration
    resume_timeout: _duration_pb2.Duration
    on_failure: RefitFailurePolicy
    engines: _containers.RepeatedScalarFieldContainer[str]
    stage: bool
    stage_timeout: _duration_pb2.Duration
    max_failed_engines: int
    def __init__(self, request_id: _Optional[str] = ..., mode: _Optional[_Union[PauseMode, str]] = ..., clear_cache: _Optional[bool] = ..., uri: _Optional[str] = ..., version: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., pause_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., update_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resume_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., on_failure: _Optional[_Union[RefitFailurePolicy, str]] = ..., engines: _Optional[_Iterable[str]] = ..., stage: _Optional[bool] = ..., stage_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_failed_engines: _Optional[int] = ...) -> None: ...
