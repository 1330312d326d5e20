"""The cloud service: decode coded FPN features and run the R-CNN heads, over gRPC and REST."""

from .engine import CloudEngine, decode_frame, frame_digest
from .errors import MappedError, map_error
from .metrics import CloudMetrics

__all__ = ["CloudEngine", "CloudMetrics", "MappedError", "decode_frame", "frame_digest", "map_error"]
