"""``fpnlink bench rd``: task accuracy (COCO AP) against rate for every way of getting a frame to the cloud.

Configurations, each at several rate points on a dataset split (``val`` by default)::

    (a) raw16            fp16 features P2..P5 (one point)
    (b) quant_uniform    quant codec, the same bit depth on every scale (phi = bits 2..8)
    (c) learned_uniform  learned codec (``--learned-codec``: ``learned`` or ``xscale``), the same phi on every
                         scale, spread over its phi_range; for a codec with a starve level the points are
                         spread above it (starving every scale sends headers only, scores AP 0 under any
                         allocation, and would pin both BD curves to one shared point); skipped
                         (with the reason) when no learned checkpoint loads
    (d) mfiba_full       learned codec (quant when (c) is skipped: the report says which) with MFIBA
        mfiba_fast       allocation, full or fast MFIP; each frame's budget = the bytes (c) (or (b)) spent
                         on that frame at the same rate point
    (e) jpeg, webp       the image itself at several qualities (PIL); the cloud runs the whole model
    (f) edge_default     the edge's default operating point (one point): MFIBA's learned codec and profile, fast
                         MFIP, each stream's frame budget ``fpnlink.edge.operating_point.DEFAULT_BUDGET`` of the
                         original image (not matched to (c)); skipped (with the reason) without the learned codec.
                         The report sets its bytes against a quality-75 JPEG of the same images (coded for this
                         ratio only: the jpeg curve has no q75 point) and its AP against the uncompressed features'

How one image flows (a "stream" is the set of architectures sharing one backbone: one stream for an
fpnlink bundle, three for torchvision's COCO weights)::

    image ─> edge half (once per stream) ─> P2..P5 ─┬─> codec.encode(phi) ─> FeatureFrame ─> decode ──────┐
                                                     ├─> MFIP (once per mode) ─> RateController(budget_k) ─┤
    image ─> JPEG/WebP(q) ─> decode ─> edge half ───────────────────────────────────────────────────────────┤
                                                                                                             ▼
                   every variant stacked on the batch axis ─> cloud half, one call per arch (--max-batch chunks)
                                                                                                             ▼
                                          COCO results per (configuration, rate point) ─> COCOeval ─> AP

Rates are real bytes: a feature frame is the serialized ``FeatureFrame`` (header, fingerprints, shapes,
planned bits and payloads), an image is its JPEG/WebP file; bpp divides by the ORIGINAL image's
pixels and is averaged over frames. With several streams a task's bpp is that of its own stream, and
a point's overall bpp is the sum over the streams needed for all three tasks.

Writes ``REPORT_DIR/report.md``, ``rd.json`` (also ``--json PATH``), ``rd_box.png``, ``rd_mask.png``,
``rd_keypoint.png`` (AP against bpp) and the MFIBA profile it calibrated, if any. BD-rates (PCHIP
over log-rate, each curve reduced to its monotone envelope: :func:`fpnlink.tools.bd_rate.bd_rate_checked`)
are given against (c), (b), JPEG and WebP for every configuration and task; a value that cannot be
computed is null with its reason.

COCO mode: ``--data`` a folder with ``annotations/instances_val2017.json``,
``annotations/person_keypoints_val2017.json`` and ``val2017/``, with ``--weights coco`` (downloads
torchvision's weights; it needs a connection). The MFIBA profile is ``--profile``, else the one shipped for the
codec and backbone (the edge's), else calibrated here (``--calibrate`` forces that): on train images, or
without a train split on val images after the evaluated ones.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from fpnlink.edge.operating_point import DEFAULT_BUDGET, DEFAULT_MFIP
from fpnlink.shared.codec import DEFAULT_LEARNED_CODEC, FeatureCodec, make_codec
from fpnlink.shared.errors import FpnlinkError
from fpnlink.shared.imageio import to_tensor
from fpnlink.shared.mfiba import (
    FullMfip, Importance, Profile, RateController, calibrate, load_profile, parse_budget, quality_levels,
    shipped_profile,
)
from fpnlink.shared.model import (
    TASK_ARCH, TRANSMITTED_SCALES, CloudHalf, EdgeHalf, ModelBundle, ModelConfig, load_bundle, shared_cloud_half,
)
from fpnlink.shared.wire import FrameHeader, build_frame

from ..image_coding import REFERENCE_JPEG_QUALITY, decode_image, encode_image
from ..evaluation import ARCH_METRIC, METRICS, ApAccumulator, bits_per_pixel, kbps, load_dataset
from ..devices import resolve_device
from .common import machine, median_ms, write_json
from .rd_report import CONFIGS, LABELS, bd_rate_report, edge_default_summary, render_markdown, write_plots

IMAGE_FORMATS: dict[str, str] = {"jpeg": "JPEG", "webp": "WEBP"}
QUANT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
IMAGE_QUALITIES: tuple[int, ...] = (5, 10, 20, 30, 50, 70, 90)
EDGE_BUDGET = parse_budget(DEFAULT_BUDGET)
MFIBA_CONFIGS: tuple[str, ...] = ("mfiba_full", "mfiba_fast", "edge_default")
"""The configurations coded by an :class:`MfibaSetup`'s rate controllers."""
DEFAULTS: dict[bool, dict[str, int | None]] = {
    True: {"images": 8, "rate_points": 3, "calib_images": 2},  # quick
    False: {"images": None, "rate_points": 5, "calib_images": 8},
}
SYNTHETIC_DETECTIONS = 20
"""Detections kept per image on synthetic scenes (at most 9 objects each); COCO keeps torchvision's 100."""
ARCH_TASK: dict[str, str] = {arch: task for task, arch in TASK_ARCH.items()}
UNCOMPRESSED = ("uncompressed", 0)
FP32_BYTES = 4
Key = tuple[str, int]


@dataclass(frozen=True)
class RdSettings:
    """What ``fpnlink bench rd`` runs; ``None`` means the mode's default (see :data:`DEFAULTS`).

    Args:
        data: synthetic dataset folder or COCO 2017 folder.
        weights: ``random:SEED``, ``synthetic``, ``coco`` or a bundle path.
        out: report directory.
        learned_codec: which learned codec (c) and (d) use.
        learned_ckpt: its checkpoint; ``None`` the shipped default, ``"none"`` to skip (c).
        size: network input size (synthetic: the images' side; COCO: torchvision's 800/1333).
        mfip_tasks: tasks whose losses define MFIP importance (within each stream's tasks).
        max_batch: most variants per heads call.
        configs: which configurations to run (MFIBA adds its uniform anchor).
    """

    data: Path
    weights: str
    out: Path
    quick: bool = False
    json_path: Path | None = None
    images: int | None = None
    rate_points: int | None = None
    profile: Path | None = None
    calibrate: bool = False
    learned_codec: str = DEFAULT_LEARNED_CODEC
    learned_ckpt: str | None = None
    split: str = "val"
    size: int | None = None
    fps: float = 30.0
    calib_images: int | None = None
    mfip_levels: int = 4
    mfip_tasks: tuple[str, ...] = ("detect",)
    detections_per_img: int | None = None
    max_batch: int = 8
    configs: tuple[str, ...] = CONFIGS
    device: str = "cpu"
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        unknown = [c for c in self.configs if c not in CONFIGS]
        if unknown or not self.configs:
            raise ValueError(f"configs must be a non-empty subset of {list(CONFIGS)}, got {list(self.configs)}")
        if self.rate_points is not None and not 2 <= self.rate_points <= len(QUANT_BITS):
            raise ValueError(f"rate_points must lie in 2..{len(QUANT_BITS)} (BD-rate needs two), "
                             f"got {self.rate_points}")
        if self.images is not None and self.images < 1:
            raise ValueError(f"images must be >= 1, got {self.images}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        bad_tasks = [t for t in self.mfip_tasks if t not in TASK_ARCH]
        if bad_tasks or not self.mfip_tasks:
            raise ValueError(f"mfip_tasks must be a non-empty subset of {list(TASK_ARCH)}, got {list(self.mfip_tasks)}")

    def default(self, name: str) -> Any:
        value = getattr(self, name)
        return DEFAULTS[self.quick][name] if value is None else value


# ---------------------------------------------------------------------------------------------- pieces


def spread(values: tuple[float, ...] | list[float], count: int) -> list[float]:
    """``count`` entries of ``values`` evenly spaced, both ends included."""
    if count >= len(values):
        return list(values)
    picks = sorted({round(i * (len(values) - 1) / (count - 1)) for i in range(count)})
    return [values[i] for i in picks]


@dataclass
class Stream:
    """Architectures that share one backbone: one edge half, one frame per image.

    Attributes:
        clouds: arch -> its cloud half; or, when the archs share their RPN and box head
            (:func:`fpnlink.shared.model.shared_cloud_half`), ``{"shared": one cloud half with every branch}``.
    """

    index: int
    archs: list[str]
    tasks: list[str]
    fingerprint: str
    edge: EdgeHalf
    clouds: dict[str, CloudHalf]

    @property
    def metrics(self) -> list[str]:
        return [ARCH_METRIC[a] for a in self.archs]


def uniform_phis(codec: FeatureCodec, count: int) -> list[float]:
    """``count`` phi values evenly over the codec's phi_range, or over ``(starve_phi, phi_max]`` where it has one."""
    low, high = codec.phi_range
    if codec.starve_phi is None:
        return [float(p) for p in np.linspace(low, high, count)]
    return [float(p) for p in np.linspace(codec.starve_phi, high, count + 1)[1:]]


def make_streams(bundle: ModelBundle, share_heads: bool = True) -> list[Stream]:
    groups: dict[str, list[str]] = defaultdict(list)
    for arch in bundle.models:
        groups[bundle.backbone_fingerprints[arch]].append(arch)
    streams = []
    for index, (fingerprint, archs) in enumerate(groups.items()):
        tasks = [ARCH_TASK[a] for a in archs]
        shared = shared_cloud_half([bundle.models[a] for a in archs]) if share_heads else None
        clouds = {"shared": shared} if shared is not None else {a: bundle.cloud_half(a).eval() for a in archs}
        streams.append(Stream(index, archs, tasks, fingerprint, bundle.edge_half(tasks).eval(), clouds))
    return streams


def load_learned(checkpoint: str | None, device: torch.device | str = "cpu", name: str = DEFAULT_LEARNED_CODEC,
                 ) -> tuple[FeatureCodec | None, str | None]:
    """The learned codec ``name``, or ``None`` and why it is unavailable."""
    if checkpoint is not None and checkpoint.lower() == "none":
        return None, "disabled with --learned-ckpt none"
    try:
        return make_codec(name, checkpoint=checkpoint, device=device), None
    except (FpnlinkError, OSError, ImportError, RuntimeError, ValueError) as exc:
        text = " ".join(str(exc).split())
        return None, f"no usable learned checkpoint ({checkpoint or 'the shipped default'}): {text[:300]}"


class StageTimer:
    """Milliseconds per stage; medians for the report (CUDA work is synchronised before the clock stops)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.cuda = device is not None and device.type == "cuda"

    def add(self, stage: str, ms: float, count: int = 1) -> None:
        self.samples[stage].extend([ms / count] * count)

    def run(self, stage: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        self.sync()
        self.add(stage, (time.perf_counter() - start) * 1e3)
        return value

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def summary(self) -> dict[str, dict[str, float]]:
        return {stage: {"median_ms": median_ms(v), "n": len(v)} for stage, v in sorted(self.samples.items())}


@dataclass
class MfibaSetup:
    """MFIBA for one stream: the codec, its uniform anchor, the profile and one controller per (mode, point),
    ``("edge_default", 0)`` included."""

    codec: FeatureCodec
    anchor: str
    profile: Profile
    profile_source: str
    full: FullMfip
    fast_reason: str | None
    controllers: dict[tuple[str, int], RateController] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- the run


class RdBench:
    """One RD benchmark run (see the module docstring); :meth:`run` returns the report dict."""

    def __init__(self, settings: RdSettings) -> None:
        self.s = settings
        self.device = resolve_device(settings.device)
        self.timer = StageTimer(self.device)
        self.notes: list[str] = []

    # -------------------------------------------------------------------------------------- setup

    def _setup(self) -> None:
        s = self.s
        self.dataset = load_dataset(s.data, s.split, s.default("images"))
        self.bundle = load_bundle(s.weights, self._model_config())
        for model in self.bundle.models.values():
            model.to(self.device)
        if not self.bundle.trained:
            self.notes.append(f"weights {self.bundle.weights!r} are untrained: every AP is meaningless")
        self.streams = make_streams(self.bundle)
        if len(self.streams) > 1:
            self.notes.append(f"{len(self.streams)} backbones ({[st.archs for st in self.streams]}): one feature "
                              "stream each; a task's bpp is its stream's, a point's bpp the sum of all streams")
        wanted = self._choose_codecs()
        self._rate_settings(int(s.default("rate_points")))
        self.mfiba: dict[int, MfibaSetup] = {}
        if (wanted - set(self.skipped)) & set(MFIBA_CONFIGS):
            self._setup_mfiba()
        self.configs = [c for c in CONFIGS if c in wanted and c not in self.skipped]

    def _model_config(self) -> ModelConfig:
        s = self.s
        if self.dataset.kind == "coco":
            min_size = s.size or ModelConfig.min_size
            return ModelConfig(min_size=min_size, max_size=max(ModelConfig.max_size, min_size),
                               detections_per_img=s.detections_per_img or ModelConfig.detections_per_img)
        size = s.size or max(self.dataset.size(self.dataset.image_ids[0]))
        return ModelConfig(min_size=size, max_size=size,
                           detections_per_img=s.detections_per_img or SYNTHETIC_DETECTIONS)

    def _choose_codecs(self) -> set[str]:
        """Build the codecs; decide MFIBA's codec and anchor. Returns the configurations to run."""
        wanted = set(self.s.configs)
        self.skipped: dict[str, str] = {}
        self.codecs: dict[str, FeatureCodec] = {"raw16": make_codec("raw16"), "quant_uniform": make_codec("quant")}
        learned, reason = None, None
        if wanted & {"learned_uniform", *MFIBA_CONFIGS}:
            learned, reason = load_learned(self.s.learned_ckpt, self.device, self.s.learned_codec)
        if learned is not None:
            self.codecs["learned_uniform"] = learned
        else:
            if "learned_uniform" in wanted:
                self.skipped["learned_uniform"] = reason or "not available"
            if "edge_default" in wanted:
                self.skipped["edge_default"] = f"the edge default runs the learned codec: {reason or 'not available'}"
        self.anchor = "learned_uniform" if learned is not None else "quant_uniform"
        if wanted & {"mfiba_full", "mfiba_fast"}:
            if self.anchor not in wanted:
                self.notes.append(f"{self.anchor} added: MFIBA budgets are matched to its rates")
                wanted.add(self.anchor)
            if learned is None:
                self.notes.append(f"MFIBA runs on the quant codec and its budgets match quant_uniform (learned "
                                  f"unavailable: {reason})")
        return wanted

    def _rate_settings(self, count: int) -> None:
        """The rate points of every configuration (``count`` each; raw16 has one)."""
        self.settings_of: dict[str, list[dict[str, Any]]] = {
            "raw16": [{"phi": 0.0}],
            "quant_uniform": [{"phi": float(b)} for b in spread(QUANT_BITS, count)],
        }
        if "learned_uniform" in self.codecs:
            self.settings_of["learned_uniform"] = [{"phi": p} for p in uniform_phis(self.codecs["learned_uniform"],
                                                                                     count)]
        for name in ("mfiba_full", "mfiba_fast"):
            self.settings_of[name] = [{"budget_of": self.anchor, "point": i}
                                      for i in range(len(self.settings_of[self.anchor]))]
        self.settings_of["edge_default"] = [{"budget": DEFAULT_BUDGET, "mfip": DEFAULT_MFIP}]
        for name in IMAGE_FORMATS:
            self.settings_of[name] = [{"quality": float(q)} for q in spread(IMAGE_QUALITIES, count)]

    def _setup_mfiba(self) -> None:
        """A profile (given or calibrated) and the controllers of every stream; skips MFIBA with the reason
        when calibration data cannot be fitted."""
        codec = self.codecs[self.anchor]
        given = load_profile(self.s.profile) if self.s.profile is not None else None  # a bad file: user error
        try:
            for stream in self.streams:
                self.mfiba[stream.index] = self._prepare_mfiba(stream, codec, self.anchor, given)
        except ValueError as exc:
            self.mfiba.clear()
            for name in MFIBA_CONFIGS:
                self.skipped.setdefault(name, f"MFIBA profile unavailable: {exc}")
            return
        no_fast = [m.fast_reason for m in self.mfiba.values() if m.fast_reason]
        if no_fast:  # every stream must have one, or the frames of some stream would be missing
            for name in ("mfiba_fast", "edge_default"):
                self.skipped.setdefault(name, no_fast[0])

    def _calibration_images(self, count: int) -> tuple[Iterator[tuple[str, Tensor]], str]:
        root = self.s.data
        if self.dataset.kind == "synthetic" and (root / "annotations" / "train.json").is_file():
            train = load_dataset(root, "train", count)
            return (((str(i), train.image(i).to(self.device)) for i in train.image_ids),
                    f"{len(train.image_ids)} train images")
        evaluated = set(self.dataset.image_ids)
        pool = load_dataset(root, self.s.split)
        spare = [i for i in pool.image_ids if i not in evaluated][:count]
        if len(spare) < count:
            spare = pool.image_ids[-count:]
            self.notes.append("MFIBA calibration images overlap the evaluated ones (the split has no spare images)")
        return (((str(i), pool.image(i).to(self.device)) for i in spare),
                f"{len(spare)} {self.s.split} images not evaluated")

    def _prepare_mfiba(self, stream: Stream, codec: FeatureCodec, anchor: str, given: Profile | None) -> MfibaSetup:
        s = self.s
        profile = None
        source = ""
        if given is not None:
            try:
                given.check_compatible(codec, stream.fingerprint)
                profile, source = given, f"--profile {s.profile}"
            except FpnlinkError as exc:
                if len(self.streams) == 1:
                    raise
                self.notes.append(f"stream {stream.index}: {exc}; calibrating instead")
        if profile is None and not s.calibrate:
            shipped = shipped_profile(codec, stream.fingerprint)
            if shipped is not None:
                profile, source = shipped, f"shipped for {codec.name} on this backbone (what the edge uses)"
        if profile is None:
            tasks = [t for t in s.mfip_tasks if t in stream.tasks] or stream.tasks[:1]
            count = int(s.default("calib_images"))
            images, described = self._calibration_images(count)
            bar = tqdm(images, total=count, desc=f"calibrate {codec.name}", disable=not s.progress, leave=False)
            start = time.perf_counter()
            profile = calibrate(bar, self.bundle, codec, tasks, levels=s.mfip_levels,
                                data=f"{s.data} ({described})")
            self.timer.add("mfiba_calibration_total", (time.perf_counter() - start) * 1e3)
            path = profile.save(s.out / f"profile_{codec.name}_stream{stream.index}.json")
            source = f"calibrated on {described} (saved to {path.name})"
        integer = profile.codec.phi_grid == "integer"
        levels = profile.calibration.get("levels") or quality_levels(codec.phi_range, s.mfip_levels, integer)
        full = FullMfip(self.bundle, codec, list(profile.tasks), [float(v) for v in levels], max_batch=None)
        fast_reason = None if profile.fast_predictor is not None else "the MFIBA profile has no fast predictor"
        setup = MfibaSetup(codec, anchor, profile, source, full, fast_reason)
        for mode in ("full", "fast"):
            for point in range(len(self.settings_of[anchor])):
                setup.controllers[mode, point] = RateController(codec, profile)
        setup.controllers["edge_default", 0] = RateController(codec, profile)
        return setup

    # -------------------------------------------------------------------------------------- per image

    @torch.inference_mode()
    def run(self) -> dict[str, Any]:
        wall = time.perf_counter()
        self.s.out.mkdir(parents=True, exist_ok=True)
        self._setup()
        self.scores = ApAccumulator(self.dataset)
        # key -> per image: overall bytes; key -> metric -> per image bytes; per image pixels
        self.frame_bytes: dict[Key, list[int]] = defaultdict(list)
        self.task_bytes: dict[Key, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.sizes: list[tuple[int, int]] = []
        self.raw_bytes: list[int] = []
        self.jpeg75_bytes: list[int] = []
        self.mfiba_log: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        self.mfip_weights: dict[str, list[dict[str, float]]] = defaultdict(list)
        ids = self.dataset.image_ids
        for index, image_id in enumerate(tqdm(ids, desc="bench rd", unit="img", disable=not self.s.progress)):
            self._one_image(index, image_id)
        start = time.perf_counter()
        ap = {key: self.scores.score(key) for key in self.scores.keys()}
        self.timer.add("cocoeval_total", (time.perf_counter() - start) * 1e3)
        report = self._report(ap, time.perf_counter() - wall)
        return report

    def _header(self, stream: Stream, codec: FeatureCodec, key: Key, frame_id: int, input_size: tuple[int, int],
                original_size: tuple[int, int]) -> FrameHeader:
        return FrameHeader(stream_id=f"rd-{key[0]}-{key[1]}", frame_id=frame_id,
                           capture_time_us=time.time_ns() // 1000, original_size=original_size,
                           input_size=input_size, model_fingerprint=stream.fingerprint, tasks=stream.tasks,
                           codec=codec.name, codec_fingerprint=codec.fingerprint)

    def _one_image(self, index: int, image_id: int) -> None:
        array = self.dataset.image_array(image_id)
        image = to_tensor(array).to(self.device)
        self.sizes.append((int(image.shape[1]), int(image.shape[2])))
        decoded_images: list[tuple[Key, Tensor]] = []
        for name in IMAGE_FORMATS:
            if name not in self.configs:
                continue
            for point, setting in enumerate(self.settings_of[name]):
                data = self.timer.run(f"{name}_encode", lambda: encode_image(array, IMAGE_FORMATS[name],
                                                                             int(setting["quality"])))
                decoded = self.timer.run(f"{name}_decode", lambda: to_tensor(decode_image(data)).to(self.device))
                key = (name, point)
                self.frame_bytes[key].append(len(data))
                for metric in METRICS:
                    self.task_bytes[key][metric].append(len(data))
                decoded_images.append((key, decoded))
        if "edge_default" in self.configs:
            self.jpeg75_bytes.append(len(encode_image(array, "JPEG", REFERENCE_JPEG_QUALITY)))
        stream_bytes: dict[Key, int] = defaultdict(int)
        for stream in self.streams:
            variants = self._stream_variants(stream, index, image, decoded_images, stream_bytes)
            self._run_heads(stream, variants, image_id)
        for key, nbytes in stream_bytes.items():
            self.frame_bytes[key].append(nbytes)

    def _stream_variants(self, stream: Stream, index: int, image: Tensor, decoded_images: list[tuple[Key, Tensor]],
                         stream_bytes: dict[Key, int]) -> list[tuple[Key, dict[str, Tensor], tuple]]:
        """Every decoded feature variant of one image for one stream, the lossless one first."""
        features, input_sizes, original_sizes = self.timer.run("backbone", lambda: stream.edge([image]))
        sizes = (input_sizes, original_sizes)
        if stream.index == 0:
            self.raw_bytes.append(sum(t.numel() * FP32_BYTES for t in features.values()))
        variants: list[tuple[Key, dict[str, Tensor], tuple]] = [(UNCOMPRESSED, features, sizes)]
        anchor_bytes: dict[int, int] = {}

        def send(key: Key, codec: FeatureCodec, records: list, planned: dict[str, int] | None = None) -> int:
            header = self._header(stream, codec, key, index + 1, input_sizes[0], original_sizes[0])
            frame = self.timer.run("frame_build", lambda: build_frame(header, records, planned))
            nbytes = frame.ByteSize()
            decoded = self.timer.run(f"{key[0]}_decode", lambda: codec.decode(records))
            variants.append((key, {n: t.to(self.device, torch.float32) for n, t in decoded.items()}, sizes))
            stream_bytes[key] += nbytes
            for metric in stream.metrics:
                self.task_bytes[key][metric].append(nbytes)
            return nbytes

        def budgeted(key: Key, setup: MfibaSetup, controller: RateController, weights: dict[str, float],
                     budget: float) -> None:
            result = self.timer.run(f"{key[0]}_rate_control", lambda: controller.code(features, weights, budget))
            nbytes = send(key, setup.codec, result.records, result.planned_bits)
            controller.observe_frame(nbytes)
            self.mfiba_log[key].append({
                "budget_bits": budget, "frame_bits": 8 * nbytes, "phi": result.phi, "passes": result.passes,
                "feasible": result.allocation.feasible, "saturated": result.allocation.saturated})

        for name in ("raw16", "quant_uniform", "learned_uniform"):
            if name not in self.configs:
                continue
            codec = self.codecs[name]
            for point, setting in enumerate(self.settings_of[name]):
                phi = {n: setting["phi"] for n in TRANSMITTED_SCALES}
                records = self.timer.run(f"{name}_encode", lambda: codec.encode(features, phi))
                nbytes = send((name, point), codec, records)
                if name == self.anchor:
                    anchor_bytes[point] = nbytes
        setup = self.mfiba.get(stream.index)
        if setup is not None:
            importance = self._importance(setup, features, sizes)
            for mode in ("full", "fast"):
                name = f"mfiba_{mode}"
                if name in self.configs:
                    for point in range(len(self.settings_of[name])):
                        budgeted((name, point), setup, setup.controllers[mode, point], importance[mode].weights,
                                 8.0 * anchor_bytes[point])
            if "edge_default" in self.configs:
                budgeted(("edge_default", 0), setup, setup.controllers["edge_default", 0], importance["fast"].weights,
                         EDGE_BUDGET.bits_per_frame(original_sizes[0]))
        for key, decoded in decoded_images:
            image_features, image_inputs, image_originals = self.timer.run("backbone", lambda: stream.edge([decoded]))
            variants.append((key, image_features, (image_inputs, image_originals)))
        return variants

    def _importance(self, setup: MfibaSetup, features: dict[str, Tensor], sizes: tuple) -> dict[str, Importance]:
        """MFIP of one image in each mode a running configuration needs (fast: mfiba_fast and edge_default)."""
        out: dict[str, Importance] = {}
        if "mfiba_full" in self.configs:
            out["full"] = self.timer.run("mfip_full", lambda: setup.full(features, *sizes))
        if {"mfiba_fast", "edge_default"} & set(self.configs):
            predictor = setup.profile.fast_predictor
            out["fast"] = self.timer.run("mfip_fast", lambda: predictor.importance(features))
        for mode, importance in out.items():
            self.mfip_weights[mode].append(dict(importance.weights))
        return out

    def _run_heads(self, stream: Stream, variants: list[tuple[Key, dict[str, Tensor], tuple]], image_id: int) -> None:
        """All variants of one image through each cloud half, ``max_batch`` at a time (the RPN and ROI
        heads treat the images of a batch independently, so this equals one call per variant)."""
        for name, cloud in stream.clouds.items():
            archs = stream.archs if name == "shared" else [name]
            for first in range(0, len(variants), self.s.max_batch):
                chunk = variants[first:first + self.s.max_batch]
                batched = {n: torch.cat([features[n] for _, features, _ in chunk]) for n in TRANSMITTED_SCALES}
                input_sizes = [size for _, _, (inputs, _) in chunk for size in inputs]
                original_sizes = [size for _, _, (_, originals) in chunk for size in originals]
                start = time.perf_counter()
                outputs = cloud(batched, input_sizes, original_sizes)
                self.timer.sync()
                self.timer.add(f"heads_{name}", (time.perf_counter() - start) * 1e3, len(chunk))
                for (key, _, _), output in zip(chunk, outputs):
                    for arch in archs:
                        self.scores.add(key, arch, image_id, output)

    # -------------------------------------------------------------------------------------- report

    def _rate_summary(self, key: Key) -> dict[str, Any]:
        frames = self.frame_bytes[key]
        bpp = [bits_per_pixel(b, size) for b, size in zip(frames, self.sizes, strict=True)]
        task_bpp = {m: float(np.mean([bits_per_pixel(b, size) for b, size in zip(v, self.sizes, strict=True)]))
                    for m, v in self.task_bytes[key].items()}
        bytes_per_frame = float(np.mean(frames))
        return {"bpp": float(np.mean(bpp)), "bytes_per_frame": bytes_per_frame,
                "kbps": kbps(bytes_per_frame, self.s.fps), "task_bpp": task_bpp, "frames": len(frames)}

    def _report(self, ap: dict[Key, dict[str, dict[str, float | None]]], wall_s: float) -> dict[str, Any]:
        s = self.s
        served = sorted({m for st in self.streams for m in st.metrics}, key=METRICS.index)
        uncompressed = ap[UNCOMPRESSED]
        ap_uncompressed = {m: uncompressed.get(m, {}).get("ap") for m in METRICS}
        null_reasons = {m: ("no ground truth of this task among the evaluated images" if m in served
                            else "the weights have no model for this task")
                        for m in METRICS if ap_uncompressed[m] is None}
        configs: dict[str, Any] = {}
        for name in CONFIGS:
            entry: dict[str, Any] = {"label": LABELS[name], "kind": "image" if name in IMAGE_FORMATS else "features",
                                     "skipped": self.skipped.get(name), "points": [], "detail": []}
            codec = self.codecs.get(name)
            if name in MFIBA_CONFIGS and self.mfiba:
                codec = next(iter(self.mfiba.values())).codec
            if codec is not None:
                entry.update(codec=codec.name, codec_fingerprint=codec.fingerprint)
                if getattr(codec, "checkpoint", None) is not None:
                    entry["codec_checkpoint"] = str(codec.checkpoint)
            if name not in self.configs and entry["skipped"] is None:
                entry["skipped"] = "not requested (--configs)"
            if entry["skipped"] is None:
                for point, setting in enumerate(self.settings_of[name]):
                    key = (name, point)
                    rate = self._rate_summary(key)
                    scores = ap[key]
                    row = [rate["bpp"]] + [scores.get(m, {}).get("ap") for m in METRICS]
                    entry["points"].append(row)
                    detail = {"setting": setting, **rate, "ap": {m: scores.get(m, {}).get("ap") for m in METRICS},
                              "ap50": {m: scores.get(m, {}).get("ap50") for m in METRICS}}
                    if name in MFIBA_CONFIGS:
                        detail["rate_control"] = _mfiba_point_summary(self.mfiba_log[key])
                    entry["detail"].append(detail)
            configs[name] = entry
        report: dict[str, Any] = {
            "bench": "rd",
            "quick": s.quick,
            "command": s.command,
            "data": {"path": str(s.data), "kind": self.dataset.kind, "split": s.split,
                     "images": len(self.dataset.image_ids), "first_image_ids": self.dataset.image_ids[:10]},
            "device": str(self.device),
            "model_config": {"min_size": self.bundle.config.min_size, "max_size": self.bundle.config.max_size,
                             "detections_per_img": self.bundle.config.detections_per_img},
            "weights": _weights_info(self.bundle),
            "streams": [{"archs": st.archs, "tasks": st.tasks, "backbone_fingerprint": st.fingerprint}
                        for st in self.streams],
            "fps": s.fps,
            "rate_points": s.default("rate_points"),
            "metrics": list(METRICS),
            "point_columns": ["bpp", "ap_box", "ap_mask", "ap_kp"],
            "ap_uncompressed": ap_uncompressed,
            "ap50_uncompressed": {m: uncompressed.get(m, {}).get("ap50") for m in METRICS},
            "ap_null_reasons": null_reasons,
            "raw_fp32_feature_bytes_per_frame": float(np.mean(self.raw_bytes)) if self.raw_bytes else None,
            "configs": configs,
            "mfiba": self._mfiba_info(),
            "edge_default": edge_default_summary(configs["edge_default"], ap_uncompressed, self.jpeg75_bytes),
            "timings_ms": self.timer.summary(),
            "notes": self.notes,
            "machine": machine(),
            "wall_s": round(wall_s, 1),
        }
        report["bd_rate_percent"] = bd_rate_report(configs, len(self.dataset.image_ids))
        return report

    def _mfiba_info(self) -> dict[str, Any]:
        if not self.mfiba:
            return {"ran": False, "reason": self.skipped.get("mfiba_full") or "not requested (--configs)"}
        setup = next(iter(self.mfiba.values()))
        return {
            "ran": True,
            "codec": setup.codec.name,
            "codec_choice": (f"{setup.codec.name} (c) available" if setup.codec.name != "quant" else
                             f"quant: learned unavailable ({self.skipped.get('learned_uniform', 'not requested')})"),
            "budgets_matched_to": setup.anchor,
            "profiles": {str(i): {"source": m.profile_source, "tasks": list(m.profile.tasks),
                                  "phi_grid": m.profile.codec.phi_grid,
                                  "calibration_images": m.profile.calibration.get("images"),
                                  "mean_weights": m.profile.calibration.get("mean_weights"),
                                  "weight_gains": m.profile.to_dict()["weight_gains"]}
                         for i, m in self.mfiba.items()},
            "mfip_mean_weights": {mode: {n: float(np.mean([w[n] for w in ws])) for n in ws[0]}
                                  for mode, ws in self.mfip_weights.items() if ws},
        }


def _mfiba_point_summary(log: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [(e["frame_bits"] - e["budget_bits"]) / e["budget_bits"] for e in log]
    names = list(log[0]["phi"]) if log else []
    return {
        "budget_bits_mean": float(np.mean([e["budget_bits"] for e in log])) if log else None,
        "budget_error_median": float(statistics.median(abs(e) for e in errors)) if errors else None,
        "budget_error_mean_signed": float(np.mean(errors)) if errors else None,
        "phi_mean": {n: float(np.mean([e["phi"][n] for e in log])) for n in names},
        "corrected_fraction": float(np.mean([e["passes"] > 1 for e in log])) if log else None,
        "infeasible_frames": int(sum(not e["feasible"] for e in log)),
        "saturated_frames": int(sum(e["saturated"] for e in log)),
    }


def _weights_info(bundle: ModelBundle) -> dict[str, Any]:
    prints = sorted(f"{a}:{bundle.backbone_fingerprints[a]}:{bundle.head_fingerprints[a]}" for a in bundle.models)
    return {"name": bundle.weights, "trained": bundle.trained,
            "fingerprint": hashlib.sha256("|".join(prints).encode()).hexdigest()[:16],
            "backbone_fingerprints": dict(bundle.backbone_fingerprints),
            "head_fingerprints": dict(bundle.head_fingerprints)}


def run_rd_bench(settings: RdSettings) -> dict[str, Any]:
    """Run the benchmark and write report.md, rd.json, the plots (and ``settings.json_path``)."""
    report = RdBench(settings).run()
    out = settings.out
    plots = write_plots(report, out)
    report["files"] = [p.name for p in plots] + ["report.md", "rd.json"]
    write_json(out / "rd.json", report)
    if settings.json_path is not None:
        write_json(settings.json_path, report)
    (out / "report.md").write_text(render_markdown(report))
    return report


# ---------------------------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = RdSettings(
        data=args.data, weights=args.weights, out=args.out, quick=args.quick, json_path=args.json,
        images=args.images, rate_points=args.rate_points, profile=args.profile, calibrate=args.calibrate,
        learned_codec=args.learned_codec, learned_ckpt=args.learned_ckpt,
        split=args.split, size=args.size, fps=args.fps, calib_images=args.calib_images, mfip_levels=args.mfip_levels,
        mfip_tasks=tuple(t.strip() for t in args.mfip_tasks.split(",") if t.strip()),
        detections_per_img=args.detections_per_img, max_batch=args.max_batch, device=args.device,
        configs=tuple(c.strip() for c in args.configs.split(",") if c.strip()),
        command=" ".join(["fpnlink", *sys.argv[1:]]),
    )
    report = run_rd_bench(settings)
    print(f"ap_uncompressed {report['ap_uncompressed']}")
    for name, entry in report["configs"].items():
        if entry["skipped"]:
            print(f"{name}: skipped ({entry['skipped']})")
        else:
            print(f"{name}: " + "; ".join(f"bpp {p[0]:.4g} AP {[None if a is None else round(a, 4) for a in p[1:]]}"
                                         for p in entry["points"]))
    bd = report["bd_rate_percent"]
    print(f"bd_rate_percent mfiba_vs_uniform {bd['mfiba_vs_uniform']} features_vs_jpeg {bd['features_vs_jpeg']}")
    print(f"wrote {args.out / 'report.md'}" + (f" and {args.json}" if args.json else ""))
    return 0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("rd", help="AP against bpp: raw16, quant, learned, MFIBA, JPEG/WebP, "
                                                    "the edge default",
                                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="synthetic dataset or COCO 2017 folder")
    parser.add_argument("--weights", required=True, help="random:SEED, synthetic, coco or a bundle path")
    parser.add_argument("--out", type=Path, required=True, help="report directory (report.md, rd.json, PNGs)")
    parser.add_argument("--quick", action="store_true", help="8 images, 3 rate points, 2 calibration images")
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    parser.add_argument("--images", type=int, help="evaluate the first N images of the split (quick 8, else all)")
    parser.add_argument("--rate-points", type=int, help="rate points per configuration, 2..7 (quick 3, else 5)")
    parser.add_argument("--profile", type=Path, help="MFIBA profile (`fpnlink mfiba calibrate`); default: the one "
                        "shipped for the codec and backbone, else calibrated here")
    parser.add_argument("--calibrate", action="store_true",
                        help="calibrate a profile here even when one is shipped for the codec and backbone")
    parser.add_argument("--learned-codec", default=DEFAULT_LEARNED_CODEC, choices=("xscale", "learned"),
                        help=f"learned codec of (c) and (d) (default {DEFAULT_LEARNED_CODEC})")
    parser.add_argument("--learned-ckpt", help="its checkpoint (default: the shipped one; 'none' skips it)")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="synthetic split (COCO: val)")
    parser.add_argument("--size", type=int, help="network input size (default: image side; COCO 800)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate for kbps")
    parser.add_argument("--calib-images", type=int, help="MFIBA calibration images (quick 2, else 8)")
    parser.add_argument("--mfip-levels", type=int, default=4, help="MFIP quality levels")
    parser.add_argument("--mfip-tasks", default="detect", help="tasks whose losses define MFIP importance")
    parser.add_argument("--detections-per-img", type=int, help="detections kept per image (synthetic 20, COCO 100)")
    parser.add_argument("--max-batch", type=int, default=8, help="variants per heads call")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where the models run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.set_defaults(func=_run)
