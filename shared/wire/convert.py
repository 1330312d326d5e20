"""Protobuf messages <-> fpnlink values. The only module that touches the generated code's messages.

Decoding validates everything a frame claims (sizes, scale names, shapes, limits) before any tensor
is built, and raises :class:`~fpnlink.shared.errors.BadFrameError` naming the offending field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from torch import Tensor

from ..codec.base import ScaleRecord
from ..errors import BadFrameError, UnsupportedError
from ..model.keypoint_heads import has_keypoints
from ..model.split import SCALE_STRIDES, TRANSMITTED_SCALES
from ._pb import fpnlink_pb2 as pb

TASK_TO_PB: dict[str, int] = {"detect": pb.DETECT, "segment": pb.SEGMENT, "keypoints": pb.KEYPOINTS}
PB_TO_TASK: dict[int, str] = {v: k for k, v in TASK_TO_PB.items()}
SIZE_DIVISIBLE = 32
MAX_IMAGE_SIDE = 8192
MAX_ID_LENGTH = 256
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class FrameHeader:
    """A frame's validated metadata.

    Attributes:
        original_size, input_size: ``(height, width)``.
        tasks: task names, e.g. ``["detect", "segment"]``.
    """

    stream_id: str
    frame_id: int
    capture_time_us: int
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_fingerprint: str
    tasks: list[str]
    codec: str
    codec_fingerprint: str


def expected_scale_shape(input_size: tuple[int, int], name: str) -> tuple[int, int]:
    """Spatial size of FPN scale ``name`` for a network input of ``input_size`` (padded to 32)."""
    stride = SCALE_STRIDES[name]
    padded = [math.ceil(side / SIZE_DIVISIBLE) * SIZE_DIVISIBLE for side in input_size]
    return padded[0] // stride, padded[1] // stride


def build_frame(header: FrameHeader, records: list[ScaleRecord], planned_bits: dict[str, int] | None = None,
                ) -> pb.FeatureFrame:
    """Assemble a FeatureFrame from a header and one codec's records."""
    planned_bits = planned_bits or {}
    return pb.FeatureFrame(
        stream_id=header.stream_id,
        frame_id=header.frame_id,
        capture_time_us=header.capture_time_us,
        original_size=pb.ImageSize(height=header.original_size[0], width=header.original_size[1]),
        input_size=pb.ImageSize(height=header.input_size[0], width=header.input_size[1]),
        model_fingerprint=header.model_fingerprint,
        tasks=[TASK_TO_PB[t] for t in header.tasks],
        codec=header.codec,
        codec_fingerprint=header.codec_fingerprint,
        scales=[
            pb.ScaleRecord(name=r.name, shape=list(r.shape), dtype=r.dtype, phi=r.phi, payload=r.payload,
                           planned_bits=planned_bits.get(r.name, 0))
            for r in records
        ],
    )


def _size(message: pb.ImageSize, field: str) -> tuple[int, int]:
    height, width = int(message.height), int(message.width)
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        raise BadFrameError(f"{field} must be 1..{MAX_IMAGE_SIDE} on each side, got {height}x{width}")
    return height, width


def parse_frame(frame: pb.FeatureFrame) -> tuple[FrameHeader, list[ScaleRecord]]:
    """Validate a received frame and return its header and records (payloads untouched)."""
    if len(frame.stream_id) > MAX_ID_LENGTH:
        raise BadFrameError(f"stream_id longer than {MAX_ID_LENGTH} characters")
    if not frame.tasks:
        raise BadFrameError("frame requests no task; set tasks to detect, segment and/or keypoints")
    unknown = [t for t in frame.tasks if t not in PB_TO_TASK]
    if unknown:
        raise UnsupportedError(f"unknown task values {unknown}")
    tasks = list(dict.fromkeys(PB_TO_TASK[t] for t in frame.tasks))
    header = FrameHeader(
        stream_id=frame.stream_id,
        frame_id=int(frame.frame_id),
        capture_time_us=int(frame.capture_time_us),
        original_size=_size(frame.original_size, "original_size"),
        input_size=_size(frame.input_size, "input_size"),
        model_fingerprint=frame.model_fingerprint,
        tasks=tasks,
        codec=frame.codec,
        codec_fingerprint=frame.codec_fingerprint,
    )
    names = [s.name for s in frame.scales]
    if sorted(names) != sorted(TRANSMITTED_SCALES):
        raise BadFrameError(f"frame must carry scales {list(TRANSMITTED_SCALES)} once each, got {names}")
    records = []
    channels = None
    for scale in frame.scales:
        if len(scale.shape) != 3:
            raise BadFrameError(f"scale {scale.name!r}: shape must be (C, H, W), got {list(scale.shape)}")
        shape = (int(scale.shape[0]), int(scale.shape[1]), int(scale.shape[2]))
        expected = expected_scale_shape(header.input_size, scale.name)
        if shape[1:] != expected:
            raise BadFrameError(f"scale {scale.name!r}: spatial shape {shape[1:]} does not match input size "
                                f"{header.input_size} (expected {expected})")
        if channels is not None and shape[0] != channels:
            raise BadFrameError(f"scale {scale.name!r}: {shape[0]} channels, other scales have {channels}")
        channels = shape[0]
        records.append(ScaleRecord(scale.name, shape, scale.dtype, float(scale.phi), scale.payload))
    return header, records



def task_result(task: str, detections: dict[str, Tensor], categories: list[str]) -> pb.TaskResult:
    """One task's torchvision output dict (original coordinates) as a TaskResult; masks become RLE.

    The keypoints task lists the detections that have keypoints: a detection whose keypoints are all invisible
    (a category the keypoint head does not serve, :mod:`fpnlink.shared.model.keypoint_heads`) is left out.
    """
    boxes = detections["boxes"].detach().cpu().numpy()
    labels = detections["labels"].detach().cpu().numpy()
    scores = detections["scores"].detach().cpu().numpy()
    rles = _masks_to_rle(detections["masks"]) if task == "segment" and "masks" in detections else None
    keypoints = detections.get("keypoints") if task == "keypoints" else None
    rows = range(len(boxes)) if keypoints is None else has_keypoints(keypoints).nonzero().flatten().tolist()
    out = pb.TaskResult(task=TASK_TO_PB[task])
    for i in rows:
        label = int(labels[i])
        det = out.detections.add(box=boxes[i].tolist(), label=label, score=float(scores[i]),
                                 category=categories[label] if 0 <= label < len(categories) else str(label))
        if rles is not None:
            rle = rles[i]
            det.mask.CopyFrom(pb.RleMask(height=rle["size"][0], width=rle["size"][1], counts=rle["counts"]))
        if keypoints is not None:
            det.keypoints.extend(keypoints[i].detach().cpu().reshape(-1).tolist())
            det.keypoint_scores.extend(detections["keypoints_scores"][i].detach().cpu().tolist())
    return out


def _masks_to_rle(masks: Tensor) -> list[dict]:
    """[K, 1, H, W] probabilities -> COCO compressed RLE dicts (``counts`` as bytes)."""
    binary = (masks[:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
    if len(binary) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))


def result_to_dict(result: pb.Result) -> dict:
    """A Result as plain JSON-ready values (masks stay COCO RLE with ``counts`` as a string)."""
    out: dict = {
        "stream_id": result.stream_id,
        "frame_id": result.frame_id,
        "frame_bytes": result.frame_bytes,
        "trained": result.trained,
        "stage_ms": dict(result.stage_ms),
    }
    if result.HasField("error"):
        out["error"] = {"code": result.error.code, "message": result.error.message}
    for task_result_pb in result.results:
        detections = []
        for det in task_result_pb.detections:
            item: dict = {"box": list(det.box), "label": det.label, "category": det.category, "score": det.score}
            if det.HasField("mask"):
                item["mask"] = {"size": [det.mask.height, det.mask.width], "counts": det.mask.counts.decode()}
            if det.keypoints:
                item["keypoints"] = list(det.keypoints)
                item["keypoint_scores"] = list(det.keypoint_scores)
            detections.append(item)
        out[PB_TO_TASK[task_result_pb.task]] = detections
    return out
