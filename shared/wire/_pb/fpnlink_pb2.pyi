from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    DETECT: _ClassVar[Task]
    SEGMENT: _ClassVar[Task]
    KEYPOINTS: _ClassVar[Task]
TASK_UNSPECIFIED: Task
DETECT: Task
SEGMENT: Task
KEYPOINTS: Task

class ImageSize(_message.Message):
    __slots__ = ("height", "width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class ScaleRecord(_message.Message):
    __slots__ = ("name", "shape", "dtype", "phi", "payload", "planned_bits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PHI_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PLANNED_BITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    phi: float
    payload: bytes
    planned_bits: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., phi: _Optional[float] = ..., payload: _Optional[bytes] = ..., planned_bits: _Optional[int] = ...) -> None: ...

class FeatureFrame(_message.Message):
    __slots__ = ("stream_id", "frame_id", "capture_time_us", "original_size", "input_size", "model_fingerprint", "tasks", "codec", "codec_fingerprint", "scales")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    frame_id: int
    capture_time_us: int
    original_size: ImageSize
    input_size: ImageSize
    model_fingerprint: str
    tasks: _containers.RepeatedScalarFieldContainer[Task]
    codec: str
    codec_fingerprint: str
    scales: _containers.RepeatedCompositeFieldContainer[ScaleRecord]
    def __init__(self, stream_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., capture_time_us: _Optional[int] = ..., original_size: _Optional[_Union[ImageSize, _Mapping]] = ..., input_size: _Optional[_Union[ImageSize, _Mapping]] = ..., model_fingerprint: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[Task, str]]] = ..., codec: _Optional[str] = ..., codec_fingerprint: _Optional[str] = ..., scales: _Optional[_Iterable[_Union[ScaleRecord, _Mapping]]] = ...) -> None: ...

class RleMask(_message.Message):
    __slots__ = ("height", "width", "counts")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    counts: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., counts: _Optional[bytes] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "label", "category", "score", "mask", "keypoints", "keypoint_scores")
    BOX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    KEYPOINT_SCORES_FIELD_NUMBER: _ClassVar[int]
    box: _containers.RepeatedScalarFieldContainer[float]
    label: int
    category: str
    score: float
    mask: RleMask
    keypoints: _containers.RepeatedScalarFieldContainer[float]
    keypoint_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, box: _Optional[_Iterable[float]] = ..., label: _Optional[int] = ..., category: _Optional[str] = ..., score: _Optional[float] = ..., mask: _Optional[_Union[RleMask, _Mapping]] = ..., keypoints: _Optional[_Iterable[float]] = ..., keypoint_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task", "detections")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    task: Task
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    def __init__(self, task: _Optional[_Union[Task, str]] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("stream_id", "frame_id", "results", "stage_ms", "frame_bytes", "trained", "error")
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    frame_id: int
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    stage_ms: _containers.ScalarMap[str, float]
    frame_bytes: int
    trained: bool
    error: Error
    def __init__(self, stream_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., stage_ms: _Optional[_Mapping[str, float]] = ..., frame_bytes: _Optional[int] = ..., trained: _Optional[bool] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class CapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("arch", "task", "backbone_fingerprint", "head_fingerprint", "categories", "shares_heads_with")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HEAD_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    SHARES_HEADS_WITH_FIELD_NUMBER: _ClassVar[int]
    arch: str
    task: Task
    backbone_fingerprint: str
    head_fingerprint: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    shares_heads_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, arch: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., backbone_fingerprint: _Optional[str] = ..., head_fingerprint: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., shares_heads_with: _Optional[_Iterable[str]] = ...) -> None: ...

class CodecInfo(_message.Message):
    __slots__ = ("name", "fingerprint", "lossless", "phi_min", "phi_max")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LOSSLESS_FIELD_NUMBER: _ClassVar[int]
    PHI_MIN_FIELD_NUMBER: _ClassVar[int]
    PHI_MAX_FIELD_NUMBER: _ClassVar[int]
    name: str
    fingerprint: str
    lossless: bool
    phi_min: float
    phi_max: float
    def __init__(self, name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., lossless: _Optional[bool] = ..., phi_min: _Optional[float] = ..., phi_max: _Optional[float] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("weights", "trained", "models", "codecs", "tasks", "max_frame_bytes", "min_size", "max_size")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    weights: str
    trained: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    codecs: _containers.RepeatedCompositeFieldContainer[CodecInfo]
    tasks: _containers.RepeatedScalarFieldContainer[Task]
    max_frame_bytes: int
    min_size: int
    max_size: int
    def __init__(self, weights: _Optional[str] = ..., trained: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., codecs: _Optional[_Iterable[_Union[CodecInfo, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[Task, str]]] = ..., max_frame_bytes: _Optional[int] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...
