"""The cloud service: decode coded FPN features and run the R-CNN heads, over gRPC and REST."""

from .api import create_app
from .backend import CloudBackend, FrameOutcome
from .engine import CloudEngine, decode_frame, frame_digest
from .errors import MappedError, map_error
from .metrics import CloudMetrics
from .service import BackgroundService, CloudService
from .settings import CloudSettings

__all__ = [
    "BackgroundService", "CloudBackend", "CloudEngine", "CloudMetrics", "CloudService", "CloudSettings", "FrameOutcome",
    "MappedError", "create_app", "decode_frame", "frame_digest", "map_error",
]
