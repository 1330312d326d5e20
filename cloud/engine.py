"""The cloud engine: validate a frame, decode its features, run the R-CNN heads; no transport code.

Built once per process (weights loaded by the caller) and shared by the gRPC server and the REST app::

    frame bytes ─> decode_frame ─> parse_frame ─> codec known? ─> codec fingerprint ─> backbone fingerprint
                                                                                            │
    Result <─ task_result per task <─ cloud half(s) <─ float32 P2..P5 <─ codec.decode
             (stage_ms: decode, heads, total)

When the architectures of a frame's tasks share backbone, RPN and box head (fpnlink bundles such as
``synthetic``), one shared pass (:func:`fpnlink.shared.model.shared_cloud_half`) runs RPN and box head once
and every task's branch on its detections; otherwise (torchvision's COCO models) each task runs its own
cloud half. Which architectures share is decided once, at construction (``shared_heads``, logged).

Frames batch: :meth:`CloudEngine.prepare` validates one frame (cheap, no decoding), and
:meth:`CloudEngine.run_batch` decodes a batch of prepared frames with equal ``batch_key`` (same tasks, same
network-input size) and runs their heads in one pass over the stacked features; a frame that fails fails
alone. :meth:`CloudEngine.process` is both for one frame. The codecs with weights run on the engine's device.

A frame is idempotent: the same ``(stream_id, frame_id, frame bytes)`` yields the same Result, and a small
LRU of recent results answers a resent frame without recomputing it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from google.protobuf.message import DecodeError
from torch import Tensor

from fpnlink.shared.codec import FeatureCodec, ScaleRecord, available_codecs, codec_has_weights, make_codec
from fpnlink.shared.errors import BadFrameError, FingerprintMismatchError, LimitExceededError, UnsupportedError
from fpnlink.shared.model import TASK_ARCH, ModelBundle
from fpnlink.shared.model.shared_pass import compose_shared_half, shares_box_heads
from fpnlink.shared.model.split import CloudHalf, EdgeHalf, split
from fpnlink.shared.wire import TASK_TO_PB, FrameHeader, parse_frame, pb, task_result

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MAX_FRAME_BYTES = 256 * MiB
DEFAULT_CACHE_SIZE = 64
FrameKey = tuple[str, int, str]
BatchKey = tuple[tuple[str, ...], tuple[int, int]]


def frame_digest(data: bytes) -> str:
    """Content hash of a serialized frame, the third part of a result-cache key."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_frame(data: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> pb.FeatureFrame:
    """Parse serialized FeatureFrame bytes; too large -> LimitExceededError, not a frame -> BadFrameError."""
    if len(data) > max_frame_bytes:
        raise LimitExceededError(f"frame of {len(data)} bytes exceeds the limit of {max_frame_bytes} bytes")
    try:
        return pb.FeatureFrame.FromString(data)
    except DecodeError as exc:
        raise BadFrameError(f"{len(data)} bytes are not a serialized fpnlink.v1.FeatureFrame: {exc}") from exc


def build_codec(name: str, checkpoint: str | None = None, device: str | torch.device = "cpu") -> FeatureCodec:
    """A registered codec; one with weights runs its transforms on ``device``."""
    if codec_has_weights(name):
        return make_codec(name, checkpoint, device=device)
    return make_codec(name, checkpoint)


def default_codecs(bundle: ModelBundle | None = None, device: str | torch.device = "cpu") -> dict[str, FeatureCodec]:
    """Every registered codec built with its default settings on ``device``; one that cannot be built so, or
    whose weights were trained for another backbone than ``bundle``'s, is skipped (logged)."""
    codecs = {}
    for name in available_codecs():
        try:
            codec = build_codec(name, device=device)
            if bundle is not None:
                codec.check_backbone(set(bundle.backbone_weight_fingerprints.values()))
            codecs[name] = codec
        except Exception as exc:  # e.g. a learned codec whose weights must be named explicitly
            logger.warning("codec %r is not served: it cannot be built with default settings (%s)", name, exc)
    return codecs


class _ResultCache:
    """A thread-safe, bounded LRU of results keyed by ``(stream_id, frame_id, frame digest)``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[FrameKey, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: FrameKey) -> pb.Result | None:
        with self._lock:
            blob = self._items.get(key)
            if blob is None:
                return None
            self._items.move_to_end(key)
            self.hits += 1
        return pb.Result.FromString(blob)

    def put(self, key: FrameKey, result: pb.Result) -> None:
        if self._size == 0:
            return
        blob = result.SerializeToString()
        with self._lock:
            self._items[key] = blob
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class PreparedFrame:
    """A validated frame, ready to be decoded and run in a batch.

    Attributes:
        header, records: the parsed frame.
        codec: the served codec that decodes ``records``.
        archs: the architecture of each task of ``header.tasks``.
        frame_bytes: serialized size as received.
        cache_key: where its result goes in the result cache.
        started: ``time.perf_counter()`` when preparation began (``stage_ms['total']`` counts from here).
    """

    header: FrameHeader
    records: list[ScaleRecord]
    codec: FeatureCodec
    archs: list[str]
    frame_bytes: int
    cache_key: FrameKey
    started: float

    @property
    def batch_key(self) -> BatchKey:
        """Frames with equal keys run in one batch: the same tasks at the same network-input size."""
        return tuple(self.header.tasks), tuple(self.header.input_size)


class CloudEngine:
    """Decode + heads over one :class:`ModelBundle`, shared by every transport.

    Args:
        bundle: the loaded detectors; their backbone fingerprints are what frames must carry.
        codecs: codec name -> codec served; :func:`default_codecs` on ``device`` when omitted. A codec trained
            for another backbone than the bundle's is refused (:class:`WeightsError`).
        max_frame_bytes: largest serialized frame accepted.
        device: where the heads run; the bundle's models are moved there. Torch's thread count is the
            process owner's business (``fpnlink-cloud serve --threads``), never set here.
        cache_size: how many recent results are kept for resent frames (0 disables the cache).

    Attributes:
        shared_heads: True when some architectures share backbone, RPN and box head, so that a frame asking
            for several of their tasks runs one shared pass (``ModelInfo.shares_heads_with`` in capabilities).
        shared_groups: the groups of such architectures (each of two or more, in bundle order).
    """

    def __init__(
        self,
        bundle: ModelBundle,
        codecs: dict[str, FeatureCodec] | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        device: str | torch.device = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be >= 1, got {max_frame_bytes}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.bundle = bundle
        self.device = torch.device(device)
        self.codecs = dict(codecs) if codecs is not None else default_codecs(bundle, self.device)
        for codec in self.codecs.values():
            codec.check_backbone(set(bundle.backbone_weight_fingerprints.values()))
        self.max_frame_bytes = max_frame_bytes
        for model in bundle.models.values():
            model.to(self.device)
        halves = {arch: split(model) for arch, model in bundle.models.items()}
        self._edges: dict[str, EdgeHalf] = {arch: edge for arch, (edge, _) in halves.items()}
        self._clouds: dict[str, CloudHalf] = {arch: cloud for arch, (_, cloud) in halves.items()}
        self._channels = {arch: int(model.backbone.out_channels) for arch, model in bundle.models.items()}
        self.shared_groups = _head_sharing_groups(bundle)
        self._shared: dict[frozenset[str], CloudHalf] = {}
        for group in self.shared_groups:
            for subset in _subsets(group):
                self._shared[frozenset(subset)] = compose_shared_half([bundle.models[a] for a in subset])
        if self.shared_groups:
            logger.info("shared heads: %s run RPN and box head once per frame (one pass for their tasks)",
                        " / ".join("+".join(group) for group in self.shared_groups))
        else:
            logger.info("shared heads: none; every task runs its own cloud half")
        self._cache = _ResultCache(cache_size)

    # ----------------------------------------------------------------------------------------- description

    def capabilities(self) -> pb.Capabilities:
        """What this engine serves: weights, models with fingerprints, codecs, tasks and limits."""
        arch_task = {arch: task for task, arch in TASK_ARCH.items()}
        bundle = self.bundle
        return pb.Capabilities(
            weights=bundle.weights,
            trained=bundle.trained,
            models=[
                pb.ModelInfo(arch=arch, task=TASK_TO_PB[arch_task[arch]],
                             backbone_fingerprint=bundle.backbone_fingerprints[arch],
                             head_fingerprint=bundle.head_fingerprints[arch],
                             categories=bundle.categories[arch],
                             shares_heads_with=[other for group in self.shared_groups if arch in group
                                                for other in group if other != arch])
                for arch in bundle.models
            ],
            codecs=[
                pb.CodecInfo(name=name, fingerprint=codec.fingerprint, lossless=codec.lossless,
                             phi_min=codec.phi_range[0], phi_max=codec.phi_range[1])
                for name, codec in sorted(self.codecs.items())
            ],
            tasks=[TASK_TO_PB[task] for task in self.tasks],
            max_frame_bytes=self.max_frame_bytes,
            min_size=bundle.config.min_size,
            max_size=bundle.config.max_size,
        )

    @property
    def tasks(self) -> list[str]:
        """Tasks served, in the canonical order ``detect, segment, keypoints``."""
        return [task for task, arch in TASK_ARCH.items() if arch in self.bundle.models]

    @property
    def cache_hits(self) -> int:
        return self._cache.hits

    @property
    def shared_heads(self) -> bool:
        return bool(self.shared_groups)

    # ------------------------------------------------------------------------------------------- frames

    def process(self, frame: pb.FeatureFrame, frame_bytes: int, *, digest: str | None = None) -> pb.Result:
        """Validate, decode and run the heads of every task the frame requests (a batch of one).

        Args:
            frame: a received FeatureFrame.
            frame_bytes: its serialized size as received (reported back in ``Result.frame_bytes``).
            digest: :func:`frame_digest` of the received bytes; computed from a deterministic
                re-serialization when omitted.

        Raises:
            The errors of :meth:`prepare`, and ``CodecError`` for a payload that does not decode.
        """
        prepared = self.prepare(frame, frame_bytes, digest=digest)
        if isinstance(prepared, pb.Result):
            return prepared
        outcome = self.run_batch([prepared])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def prepare(self, frame: pb.FeatureFrame, frame_bytes: int, *,
                digest: str | None = None) -> PreparedFrame | pb.Result:
        """Validate one frame without decoding it; a resent frame's cached Result is returned instead.

        Raises:
            BadFrameError: malformed frame, wrong shapes or channels.
            UnsupportedError: codec or task not served, or tasks that need different backbones.
            FingerprintMismatchError: codec or backbone fingerprint differs from what is served.
            LimitExceededError: ``frame_bytes`` over ``max_frame_bytes``.
        """
        start = time.perf_counter()
        if frame_bytes > self.max_frame_bytes:
            raise LimitExceededError(f"frame of {frame_bytes} bytes exceeds the limit of {self.max_frame_bytes}")
        header, records = parse_frame(frame)
        key = (header.stream_id, header.frame_id,
               digest or frame_digest(frame.SerializeToString(deterministic=True)))
        cached = self._cache.get(key)
        if cached is not None:
            return cached

        codec = self.codecs.get(header.codec)
        if codec is None:
            raise UnsupportedError(f"codec {header.codec!r} is not served here; served: {sorted(self.codecs)}")
        if header.codec_fingerprint != codec.fingerprint:
            raise FingerprintMismatchError(
                f"codec {header.codec!r}: frame carries fingerprint {header.codec_fingerprint!r}, this server "
                f"decodes {codec.fingerprint!r}; encode with the settings GetCapabilities lists")
        archs = self.bundle.archs_for(header.tasks)
        self.bundle.backbone_fingerprint_for(header.tasks)  # one backbone must serve every task of a frame
        for task, arch in zip(header.tasks, archs):
            expected = self.bundle.backbone_fingerprints[arch]
            if header.model_fingerprint != expected:
                raise FingerprintMismatchError(
                    f"frame features come from backbone {header.model_fingerprint!r}, but task {task!r} "
                    f"({arch} model of weights {self.bundle.weights!r}, min_size={self.bundle.config.min_size}, "
                    f"max_size={self.bundle.config.max_size}) needs backbone {expected!r}; run the edge with the "
                    f"same weights and input sizes")
            channels = self._channels[arch]
            if records[0].shape[0] != channels:
                raise BadFrameError(f"scales carry {records[0].shape[0]} channels, the {arch} heads take {channels}")
        return PreparedFrame(header, records, codec, list(archs), frame_bytes, key, start)

    def run_batch(self, frames: Sequence[PreparedFrame]) -> list[pb.Result | Exception]:
        """Decode prepared frames of one ``batch_key`` and run their heads together on the stacked features.

        Returns:
            One Result or exception per frame, in order: a payload that does not decode, or heads that fail
            on one frame, fail that frame only (the others are rerun one by one).
        """
        if len({frame.batch_key for frame in frames}) > 1:
            raise ValueError(f"a batch takes frames of one batch_key, got {sorted({f.batch_key for f in frames})}")
        outcomes: list[pb.Result | Exception | None] = [None] * len(frames)
        decoded: list[tuple[int, dict[str, Tensor], float]] = []
        for index, frame in enumerate(frames):
            decode_start = time.perf_counter()
            try:
                features = frame.codec.decode(frame.records)
                features = {name: tensor.to(self.device, torch.float32) for name, tensor in features.items()}
            except Exception as exc:  # this frame fails alone
                outcomes[index] = exc
                continue
            decoded.append((index, features, 1e3 * (time.perf_counter() - decode_start)))
        if decoded:
            heads_start = time.perf_counter()
            heads = self._heads_per_frame([frames[i] for i, _, _ in decoded], [f for _, f, _ in decoded])
            end = time.perf_counter()
            for (index, _, decode_ms), results in zip(decoded, heads):
                if isinstance(results, Exception):
                    outcomes[index] = results
                    continue
                frame = frames[index]
                result = pb.Result(
                    stream_id=frame.header.stream_id,
                    frame_id=frame.header.frame_id,
                    results=results,
                    stage_ms={"decode": decode_ms, "heads": 1e3 * (end - heads_start),
                              "total": 1e3 * (end - frame.started)},
                    frame_bytes=frame.frame_bytes,
                    trained=self.bundle.trained,
                )
                self._cache.put(frame.cache_key, result)
                outcomes[index] = result
        return outcomes  # type: ignore[return-value]  # every slot is filled

    def _heads_per_frame(self, frames: list[PreparedFrame], features: list[dict[str, Tensor]],
                         ) -> list[list[pb.TaskResult] | Exception]:
        """The heads of frames of one batch key in one pass; if that fails, each frame alone."""
        header, archs = frames[0].header, frames[0].archs
        try:
            stacked = {name: torch.cat([f[name] for f in features]) for name in features[0]}
            return self._run_heads(stacked, header.tasks, archs, [f.header.input_size for f in frames],
                                   [f.header.original_size for f in frames])
        except Exception as exc:
            if len(frames) == 1:
                return [exc]
            return [self._heads_per_frame([frame], [feats])[0] for frame, feats in zip(frames, features)]

    # ------------------------------------------------------------------------------------------- images

    def analyze_image(self, image: Tensor, tasks: Sequence[str]) -> pb.Result:
        """Run the whole detector on one image, no coding: front half(s) here, then the heads.

        Args:
            image: float tensor [3, H, W] with values in [0, 1].
            tasks: task names (``detect``, ``segment``, ``keypoints``).

        Returns:
            A Result with ``stage_ms`` ``backbone``, ``heads``, ``total``; ids and ``frame_bytes`` are 0.
        """
        start = time.perf_counter()
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise BadFrameError(f"image must be a float tensor [3, H, W] in [0, 1], got {shape}")
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise BadFrameError(f"image must not be empty, got {tuple(image.shape)}")
        tasks = list(dict.fromkeys(tasks))
        archs = self.bundle.archs_for(tasks)
        image = image.to(self.device, torch.float32)
        if float(image.min()) < 0.0 or float(image.max()) > 1.0:
            raise BadFrameError("image values must lie in [0, 1]")

        by_backbone: dict[str, tuple[dict[str, Tensor], tuple[int, int], tuple[int, int]]] = {}
        with torch.inference_mode():
            for arch in archs:
                fingerprint = self.bundle.backbone_fingerprints[arch]
                if fingerprint not in by_backbone:
                    features, image_sizes, original_sizes = self._edges[arch]([image])
                    by_backbone[fingerprint] = (features, image_sizes[0], original_sizes[0])
        heads_start = time.perf_counter()
        by_task: dict[str, pb.TaskResult] = {}
        for fingerprint, (features, input_size, original_size) in by_backbone.items():
            group = [(t, a) for t, a in zip(tasks, archs) if self.bundle.backbone_fingerprints[a] == fingerprint]
            group_results = self._run_heads(features, [t for t, _ in group], [a for _, a in group],
                                            [input_size], [original_size])[0]
            by_task.update((t, r) for (t, _), r in zip(group, group_results))
        results = [by_task[task] for task in tasks]
        end = time.perf_counter()
        return pb.Result(
            results=results,
            stage_ms={"backbone": 1e3 * (heads_start - start), "heads": 1e3 * (end - heads_start),
                      "total": 1e3 * (end - start)},
            trained=self.bundle.trained,
        )

    def warmup(self) -> None:
        """Run every model once on a blank image (first-call allocations, lazy init) before serving."""
        size = self.bundle.config.min_size
        image = torch.full((3, size, size), 0.5)
        start = time.perf_counter()
        self.analyze_image(image, self.tasks)
        logger.info("warm-up of %s took %.1f s", self.tasks, time.perf_counter() - start)

    # ---------------------------------------------------------------------------------------------- heads

    def _run_heads(
        self,
        features: dict[str, Tensor],
        tasks: list[str],
        archs: list[str],
        input_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
    ) -> list[list[pb.TaskResult]]:
        """Each image's task results, for ``features`` [N, C, h, w] of N images: one shared pass for the archs
        that share their heads, else one half per arch."""
        outputs: dict[str, list[dict[str, Tensor]]] = {}
        with torch.inference_mode():
            remaining = list(dict.fromkeys(archs))
            for group in self.shared_groups:
                members = [a for a in remaining if a in group]
                if len(members) >= 2:
                    detections = self._shared[frozenset(members)](features, input_sizes, original_sizes)
                    outputs.update((a, detections) for a in members)
                    remaining = [a for a in remaining if a not in members]
            for arch in remaining:
                outputs[arch] = self._clouds[arch](features, input_sizes, original_sizes)
        return [[task_result(task, _float32(outputs[arch][image]), self.bundle.categories[arch])
                 for task, arch in zip(tasks, archs)] for image in range(len(input_sizes))]


def _float32(detections: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detections with float32 tensors (heads run under fp16/bf16 autocast return reduced precision)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in detections.items()}


def _head_sharing_groups(bundle: ModelBundle) -> list[tuple[str, ...]]:
    """Architectures of ``bundle`` that share backbone, RPN and box head, in groups of two or more."""
    groups: list[list[str]] = []
    for arch in bundle.models:
        for group in groups:
            if shares_box_heads([bundle.models[group[0]], bundle.models[arch]]):
                group.append(arch)
                break
        else:
            groups.append([arch])
    return [tuple(group) for group in groups if len(group) >= 2]


def _subsets(group: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every sub-tuple of ``group`` with two or more members, in group order."""
    return [subset for size in range(2, len(group) + 1) for subset in itertools.combinations(group, size)]
