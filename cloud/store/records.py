"""What the store keeps of one frame (:class:`FrameRecord`), and its conversion to and from table rows.

A stored result is rebuilt from the rows alone (:func:`result_from_rows`) and equals the Result that was
answered: floats are float32 values kept as doubles, masks keep their RLE bytes, tasks keep their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fpnlink.shared.errors import BadFrameError
from fpnlink.shared.model.split import SCALE_NAMES
from fpnlink.shared.wire import PB_TO_TASK, TASK_TO_PB, pb

MAX_STORED_FRAME_ID = 2**63 - 1
"""SQL BIGINT is signed: larger frame ids cannot be stored."""


@dataclass(frozen=True)
class ScaleRow:
    """One transmitted scale: FPN key (``'0'..'3'``), phi, planned bits (0: no plan) and payload bytes."""

    name: str
    phi: float
    planned_bits: int
    payload_bytes: int


@dataclass(frozen=True)
class FrameRecord:
    """One answered frame as the store keeps it; times in microseconds since the Unix epoch.

    Attributes:
        result: the Result that was answered (detections of every task); None for a failed frame.
        error_code, error_message: the failure (gRPC status name and text) of a failed frame.
        device_id: identity of the sending device, when the transport knows it.
    """

    stream_id: str
    frame_id: int
    capture_time_us: int
    receive_time_us: int
    complete_time_us: int
    frame_bytes: int
    codec: str
    codec_fingerprint: str
    model_fingerprint: str
    tasks: tuple[str, ...]
    scales: tuple[ScaleRow, ...]
    result: pb.Result | None
    error_code: str | None = None
    error_message: str | None = None
    device_id: str | None = None
    trained: bool = False
    stage_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return self.stream_id, self.frame_id


def storage_problem(frame: pb.FeatureFrame) -> str | None:
    """Why the store cannot key ``frame`` (None when it can): no stream id (``/v1/streams/{stream_id}`` could
    not address it), or a frame id of 2**63 or more."""
    if not frame.stream_id:
        return "stream_id is empty: the results store keys frames by stream; set a stream id"
    if frame.frame_id > MAX_STORED_FRAME_ID:
        return f"frame_id {frame.frame_id} is too large to store (at most {MAX_STORED_FRAME_ID})"
    return None


def check_storable(frame: pb.FeatureFrame) -> None:
    """:class:`BadFrameError` naming the :func:`storage_problem` of ``frame``, if any."""
    problem = storage_problem(frame)
    if problem is not None:
        raise BadFrameError(problem)


def frame_record(
    frame: pb.FeatureFrame,
    *,
    receive_time_us: int,
    complete_time_us: int,
    frame_bytes: int,
    result: pb.Result | None = None,
    error: tuple[str, str] | None = None,
    device_id: str | None = None,
) -> FrameRecord:
    """The record of a received frame and its outcome: ``result`` on success, ``error`` (code, message) else.

    Raises:
        BadFrameError: a frame id that SQL cannot hold (>= 2**63).
    """
    check_storable(frame)
    tasks = tuple(dict.fromkeys(PB_TO_TASK[t] for t in frame.tasks if t in PB_TO_TASK))
    return FrameRecord(
        stream_id=frame.stream_id,
        frame_id=int(frame.frame_id),
        capture_time_us=int(frame.capture_time_us),
        receive_time_us=receive_time_us,
        complete_time_us=complete_time_us,
        frame_bytes=frame_bytes,
        codec=frame.codec[:64],
        codec_fingerprint=frame.codec_fingerprint[:64],
        model_fingerprint=frame.model_fingerprint[:64],
        tasks=tasks,
        scales=tuple(ScaleRow(s.name[:8], float(s.phi), int(s.planned_bits), len(s.payload)) for s in frame.scales
                     if s.name in SCALE_NAMES),
        result=result,
        error_code=error[0] if error else None,
        error_message=error[1] if error else None,
        device_id=device_id,
        trained=bool(result.trained) if result is not None else False,
        stage_ms=dict(result.stage_ms) if result is not None else {},
    )


def frame_row(record: FrameRecord) -> dict[str, Any]:
    """The ``frames`` row of a record (without its id)."""
    detection_count = sum(len(r.detections) for r in record.result.results) if record.result is not None else 0
    return {
        "stream_id": record.stream_id, "frame_id": record.frame_id, "device_id": record.device_id,
        "capture_time_us": record.capture_time_us, "receive_time_us": record.receive_time_us,
        "complete_time_us": record.complete_time_us, "frame_bytes": record.frame_bytes, "codec": record.codec,
        "codec_fingerprint": record.codec_fingerprint, "model_fingerprint": record.model_fingerprint,
        "tasks": ",".join(record.tasks), "trained": record.trained, "stage_ms": dict(record.stage_ms),
        "detection_count": detection_count, "error_code": record.error_code, "error_message": record.error_message,
    }


def scale_rows(record: FrameRecord, frame_pk: int) -> list[dict[str, Any]]:
    return [{"frame_pk": frame_pk, "name": s.name, "phi": s.phi, "planned_bits": s.planned_bits,
             "payload_bytes": s.payload_bytes} for s in record.scales]


def detection_rows(record: FrameRecord, frame_pk: int) -> list[dict[str, Any]]:
    """One row per detection of every task, in answer order (``position``)."""
    rows = []
    if record.result is None:
        return rows
    for task_result in record.result.results:
        task = PB_TO_TASK[task_result.task]
        for position, det in enumerate(task_result.detections):
            x1, y1, x2, y2 = det.box
            has_mask = det.HasField("mask")
            rows.append({
                "frame_pk": frame_pk, "task": task, "position": position, "label": det.label,
                "category": det.category[:128], "score": det.score, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                "mask_height": det.mask.height if has_mask else None,
                "mask_width": det.mask.width if has_mask else None,
                "mask_counts": det.mask.counts if has_mask else None,
                "keypoints": list(det.keypoints) if det.keypoints else None,
                "keypoint_scores": list(det.keypoint_scores) if det.keypoint_scores else None,
            })
    return rows


def answered_result(record: FrameRecord) -> pb.Result:
    """The Result a record's frame was answered with; for a failure, one carrying only the error."""
    if record.result is not None:
        return record.result
    return pb.Result(stream_id=record.stream_id, frame_id=record.frame_id, frame_bytes=record.frame_bytes,
                     error=pb.Error(code=record.error_code or "", message=record.error_message or ""))


def result_from_rows(frame: Mapping[str, Any], detections: Iterable[Mapping[str, Any]]) -> pb.Result:
    """The Result a stored frame was answered with, from its ``frames`` row and ``detections`` rows."""
    tasks = [t for t in frame["tasks"].split(",") if t]
    by_task = {task: pb.TaskResult(task=TASK_TO_PB[task]) for task in tasks}
    for row in sorted(detections, key=lambda r: (r["task"], r["position"])):
        det = by_task[row["task"]].detections.add(box=[row["x1"], row["y1"], row["x2"], row["y2"]],
                                                  label=row["label"], category=row["category"], score=row["score"])
        if row["mask_counts"] is not None:
            det.mask.CopyFrom(pb.RleMask(height=row["mask_height"], width=row["mask_width"],
                                         counts=bytes(row["mask_counts"])))
        if row["keypoints"] is not None:
            det.keypoints.extend(row["keypoints"])
            det.keypoint_scores.extend(row["keypoint_scores"] or [])
    result = pb.Result(stream_id=frame["stream_id"], frame_id=frame["frame_id"],
                       results=[by_task[t] for t in tasks], stage_ms=frame["stage_ms"],
                       frame_bytes=frame["frame_bytes"], trained=frame["trained"])
    if frame["error_code"] is not None:
        result.error.CopyFrom(pb.Error(code=frame["error_code"], message=frame["error_message"] or ""))
    return result
