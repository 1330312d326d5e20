"""REST response models shared by the routes of :mod:`.api` and :mod:`.analytics`: errors and results."""

from __future__ import annotations

from pydantic import BaseModel

from fpnlink.shared.wire import pb, result_to_dict


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class MaskModel(BaseModel):
    """COCO compressed RLE: ``size`` is [height, width]."""

    size: list[int]
    counts: str


class DetectionModel(BaseModel):
    """One detection; ``box`` is x1, y1, x2, y2 in original-image pixels."""

    box: list[float]
    label: int
    category: str
    score: float
    mask: MaskModel | None = None
    keypoints: list[float] | None = None
    keypoint_scores: list[float] | None = None


class ResultModel(BaseModel):
    """A Result (see ``result_to_dict``): one detection list per requested task."""

    stream_id: str
    frame_id: int
    frame_bytes: int
    trained: bool
    stage_ms: dict[str, float]
    error: ErrorBody | None = None
    detect: list[DetectionModel] | None = None
    segment: list[DetectionModel] | None = None
    keypoints: list[DetectionModel] | None = None

    @classmethod
    def from_pb(cls, result: pb.Result) -> ResultModel:
        return cls.model_validate(result_to_dict(result))
