"""The wire: generated protobuf/gRPC code (``_pb``) and conversions to and from fpnlink values."""

from ._pb import fpnlink_pb2 as pb
from ._pb import fpnlink_pb2_grpc as pb_grpc
from .convert import (
    PB_TO_TASK, TASK_TO_PB, FrameHeader, build_frame, expected_scale_shape, parse_frame,
    result_to_dict, task_result,
)

__all__ = [
    "PB_TO_TASK", "TASK_TO_PB", "FrameHeader", "build_frame", "expected_scale_shape",
    "parse_frame", "pb", "pb_grpc", "result_to_dict", "task_result",
]
