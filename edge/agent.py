"""The edge agent: one image in, one coded :class:`FeatureFrame` out. No network code.

Per frame::

    image [3, H, W] ──> EdgeHalf (transform + ResNet50 + FPN) ──> P2..P5 ('0'..'3') ──> codec.encode
                                                                                            │
             EncodedFrame(frame, stage_ms, raw_feature_bytes, frame_bytes) <── build_frame <─┘

The frame carries the backbone fingerprint of the tasks' shared backbone and the codec's fingerprint,
so the cloud can refuse features it cannot interpret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..shared.codec.base import FeatureCodec
from ..shared.mfiba.control import RateDecision
from ..shared.model.front import FrontHalf
from ..shared.model.split import TRANSMITTED_SCALES
from ..shared.model.zoo import ModelBundle
from ..shared.wire import FrameHeader, build_frame, pb
from ..shared.wire.convert import MAX_ID_LENGTH, MAX_IMAGE_SIDE

MAX_FRAME_ID = 2**64 - 1
FP32_BYTES = 4
RateControl = Callable[[dict[str, Tensor], list[tuple[int, int]], list[tuple[int, int]]], RateDecision]
"""Codes one frame's features itself: ``(features, input_sizes, original_sizes) -> RateDecision``
(e.g. :class:`fpnlink.shared.mfiba.BudgetedCoder`)."""


@dataclass(frozen=True)
class EncodedFrame:
    """One coded frame and what it cost.

    Attributes:
        frame: the wire message.
        stage_ms: edge stage timings in milliseconds: ``backbone`` (transform + body + FPN) and
            ``encode`` (codec, or rate control, + message assembly).
        raw_feature_bytes: size of the transmitted features P2..P5 as fp32, for compression ratios.
        frame_bytes: serialized size of ``frame`` (``frame.ByteSize()``), every header byte included.
        rate_decision: what ``rate_control`` decided for this frame (MFIP weights, phi and planned bits
            per scale); None without rate control.
    """

    frame: pb.FeatureFrame
    stage_ms: dict[str, float]
    raw_feature_bytes: int
    frame_bytes: int
    rate_decision: RateDecision | None


class EdgeAgent:
    """Runs the front half of the detector and codes its features, one image at a time.

    Args:
        bundle: the front half (:func:`~fpnlink.shared.model.front.load_front_half`, or an ONNX Runtime one
            from :func:`~fpnlink.edge.backends.load_onnx_front`), or whole detectors; the backbone must serve
            every task in ``tasks``.
        codec: the feature codec frames are coded with.
        tasks: task names (``detect``, ``segment``, ``keypoints``) the frames ask the cloud for.
        stream_id: stamped on every frame (at most 256 characters).

    Raises:
        UnsupportedError: ``tasks`` is empty, names an unknown task, or needs different backbones.
        WeightsError: ``codec`` was trained for another backbone.
        ValueError: ``stream_id`` is too long.
    """

    def __init__(self, bundle: FrontHalf | ModelBundle, codec: FeatureCodec, tasks: list[str], stream_id: str,
                 ) -> None:
        if len(stream_id) > MAX_ID_LENGTH:
            raise ValueError(f"stream_id must be at most {MAX_ID_LENGTH} characters, got {len(stream_id)}")
        self.tasks = list(dict.fromkeys(tasks))
        front = FrontHalf.from_bundle(bundle, self.tasks) if isinstance(bundle, ModelBundle) else bundle
        front.check_tasks(self.tasks)
        self.model_fingerprint = front.backbone_fingerprint
        codec.check_backbone({front.backbone_weight_fingerprint})
        self.edge = front.edge
        params = next(self.edge.parameters(), None) if isinstance(self.edge, torch.nn.Module) else None
        self.device = torch.device("cpu") if params is None else params.device
        self.codec = codec
        self.stream_id = stream_id
        self.weights = front.weights
        self.trained = front.trained

    def encode(
        self,
        image: Tensor,
        frame_id: int,
        phi: dict[str, float] | None = None,
        capture_time_us: int | None = None,
        rate_control: RateControl | None = None,
    ) -> EncodedFrame:
        """Run the front half on one image and code P2..P5 into a frame.

        Args:
            image: [3, H, W] float RGB in [0, 1], H and W at most 8192.
            frame_id: unique within the stream, 0 to 2**64 - 1; resending an id must mean the same image.
            phi: rate parameter per scale ``'0'..'3'``; the codec's default where missing.
            capture_time_us: capture time in microseconds since the epoch; now when omitted.
            rate_control: codes the features instead of ``codec.encode(features, phi)`` (a budgeted
                coder choosing phi per scale); its planned bits per scale travel in the frame.

        Returns:
            The frame with its stage timings and sizes.

        Raises:
            ValueError: a bad image, frame id or phi (before any work is done).
        """
        captured = time.time_ns() // 1000 if capture_time_us is None else int(capture_time_us)
        _check_image(image)
        if not 0 <= frame_id <= MAX_FRAME_ID:
            raise ValueError(f"frame_id must lie in [0, 2**64 - 1], got {frame_id}")
        unknown = sorted(set(phi or {}) - set(TRANSMITTED_SCALES))
        if unknown:
            raise ValueError(f"phi keys must be among {list(TRANSMITTED_SCALES)}, got {unknown}")
        for value in (phi or {}).values():
            self.codec.check_phi(value)
        if phi and rate_control is not None:
            raise ValueError("give either phi or rate_control, not both")

        start = time.perf_counter()
        with torch.inference_mode():
            features, input_sizes, original_sizes = self.edge([image.to(self.device)])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        backbone_done = time.perf_counter()
        planned_bits, decision = None, None
        if rate_control is None:
            records = self.codec.encode(features, phi)
        else:
            decision = rate_control(features, input_sizes, original_sizes)
            records, planned_bits = decision.control.records, decision.control.planned_bits
        header = FrameHeader(
            stream_id=self.stream_id,
            frame_id=frame_id,
            capture_time_us=captured,
            original_size=original_sizes[0],
            input_size=input_sizes[0],
            model_fingerprint=self.model_fingerprint,
            tasks=self.tasks,
            codec=self.codec.name,
            codec_fingerprint=self.codec.fingerprint,
        )
        frame = build_frame(header, records, planned_bits)
        encode_done = time.perf_counter()
        return EncodedFrame(
            frame=frame,
            stage_ms={"backbone": (backbone_done - start) * 1e3, "encode": (encode_done - backbone_done) * 1e3},
            raw_feature_bytes=sum(t.numel() * FP32_BYTES for t in features.values()),
            frame_bytes=frame.ByteSize(),
            rate_decision=decision,
        )


def _check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"image must be a torch.Tensor [3, H, W], got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W] RGB, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be float in [0, 1], got {image.dtype} (divide uint8 images by 255)")
    height, width = int(image.shape[1]), int(image.shape[2])
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        raise ValueError(f"image sides must be 1..{MAX_IMAGE_SIDE}, got {height}x{width}")
    low, high = float(image.min()), float(image.max())
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(f"image values must lie in [0, 1], got [{low}, {high}]")
