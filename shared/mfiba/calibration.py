"""Offline calibration (the paper's offline phase, Fig. 2): multi-pass coding of an image set -> a profile.

Per image::

    image ──> edge half ──> P2..P5 ──┬─> full MFIP at m levels: w_i, loss L_i(level), bits_i(level)
                                     ├─> each scale coded at every rate point phi: (phi, R_i) pairs
                                     └─> feature statistics (fast-predictor inputs), label = w

then::

    (w_i, L_i, R_i) tuples ──> Eq. 3 fits (global, per scale, quadratic baseline)   (.loss_rate)
    (phi, R_i) pairs       ──> Eq. 7 per scale (line or monotone spline)             (.rate_phi)
    (stats, w)             ──> fast MFIP predictor                                   (.fast_predictor)

Rates are bits per spatial position from real payload bytes. Whether the codec's phi only takes
integer values is detected by coding the smallest scale at ``k``, ``k + 0.3``, ``k + 0.7`` and ``k + 1``
for a few integers ``k``: identical payloads on both sides of each half step mean an integer grid;
quality levels and rate points are then integers. A codec's starve level (``starve_phi``) is a
quality level of full MFIP but not a rate point: the rate-phi models cover the coded range above it
(:attr:`.profile.CodecInfo.coded_phi_range`), and rate control treats starving as a discrete choice.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..codec.base import FeatureCodec
from ..model.zoo import ModelBundle
from .fast_predictor import feature_stats, train_fast_predictor
from .importance import DEFAULT_LEVELS, FullMfip, quality_levels
from .loss_rate import fit_loss_rate
from .profile import BackboneInfo, CodecInfo, Profile
from .rate_phi import fit_rate_phi

DEFAULT_RATE_POINTS = 8
"""Rate points per scale on a continuous phi grid (an integer grid uses every integer, up to 16)."""
MAX_INTEGER_POINTS = 16
_PROBES = 3


def detect_phi_grid(codec: FeatureCodec, name: str, tensor: Tensor) -> str:
    """``'integer'`` if the codec's output only changes at integer phi, else ``'continuous'`` (see module doc)."""
    low, high = codec.phi_range
    integers = list(range(math.ceil(low), math.floor(high)))
    if not integers:
        return "continuous"
    picks = sorted({integers[round(i * (len(integers) - 1) / max(_PROBES - 1, 1))] for i in range(_PROBES)})

    def payload(phi: float) -> bytes:
        return b"".join(r.payload for r in codec.encode({name: tensor}, {name: phi}))

    for k in picks:
        if payload(k) != payload(k + 0.3) or payload(k + 0.7) != payload(k + 1):
            return "continuous"
    return "integer"


def rate_points(phi_range: tuple[float, float], grid: str, count: int = DEFAULT_RATE_POINTS) -> tuple[float, ...]:
    """The phi values each scale is coded at for the rate-phi fit."""
    low, high = phi_range
    if grid == "integer":
        values = np.arange(math.ceil(low), math.floor(high) + 1, dtype=np.float64)
        if len(values) > MAX_INTEGER_POINTS:
            values = np.unique(np.round(np.linspace(values[0], values[-1], MAX_INTEGER_POINTS)))
        return tuple(float(v) for v in values)
    return tuple(float(v) for v in np.linspace(low, high, max(count, 2)))


def calibrate(
    images: Iterable[tuple[str, Tensor]],
    bundle: ModelBundle,
    codec: FeatureCodec,
    tasks: Sequence[str] = ("detect",),
    levels: int = DEFAULT_LEVELS,
    points: int = DEFAULT_RATE_POINTS,
    data: str = "",
    max_batch: int | None = None,
) -> Profile:
    """Run the offline phase over ``images`` and fit a :class:`Profile`.

    Args:
        images: ``(name, [3, H, W] float in [0, 1])`` pairs (wrap in a progress bar outside).
        bundle: detectors; the edge half of ``tasks`` makes the features, their heads judge MFIP.
        codec: the codec to calibrate.
        tasks: tasks whose losses define importance.
        levels: MFIP quality levels ``m`` (1..8).
        points: rate points per scale on a continuous phi grid.
        data: where the images came from (recorded in the profile).
        max_batch: most MFIP variants per heads call.

    Raises:
        ValueError: no image, or data the fits cannot use.
    """
    tasks = list(dict.fromkeys(tasks))
    edge = bundle.edge_half(tasks).eval()
    loss_samples: dict[str, tuple[list[float], list[float], list[float]]] = {}
    phi_samples: dict[str, tuple[list[float], list[float]]] = {}
    stats, labels = [], []
    timing: dict[str, list[float]] = {"backbone": [], "precode": [], "heads": [], "scoring": [], "mfip": [],
                                      "rate_points": []}
    codec_info: CodecInfo | None = None
    mfip: FullMfip | None = None
    phis: tuple[float, ...] = ()
    input_sizes = set()
    degenerate = 0
    count = 0
    for _, image in images:
        start = time.perf_counter()
        with torch.inference_mode():
            features, image_sizes, original_sizes = edge([image])
        timing["backbone"].append((time.perf_counter() - start) * 1e3)
        input_sizes.add(tuple(image_sizes[0]))
        if mfip is None:
            smallest = list(features)[-1]
            grid = detect_phi_grid(codec, smallest, features[smallest])
            mfip = FullMfip(bundle, codec, tasks, quality_levels(codec.phi_range, levels, grid == "integer"),
                            max_batch=max_batch)
            codec_info = CodecInfo(codec.name, codec.fingerprint,
                                   (float(codec.phi_range[0]), float(codec.phi_range[1])), grid, codec.starve_phi)
            phis = rate_points(codec_info.coded_phi_range, grid, points)
        result = mfip(features, image_sizes, original_sizes)
        degenerate += int(result.degenerate)
        for key in ("precode", "heads", "scoring"):
            timing[key].append(result.timing_ms[key])
        timing["mfip"].append(result.timing_ms["total"])

        start = time.perf_counter()
        for name, tensor in features.items():
            positions = int(tensor.shape[-2] * tensor.shape[-1])
            w_list, d_list, r_list = loss_samples.setdefault(name, ([], [], []))
            for level, loss, bits in zip(result.levels, result.losses[name], result.rate_bits[name]):
                w_list.append(result.weights[name])
                d_list.append(loss)
                r_list.append(bits / positions)
            p_list, rate_list = phi_samples.setdefault(name, ([], []))
            known = dict(zip(result.levels, result.rate_bits[name]))
            for phi in phis:
                bits = known.get(phi)
                if bits is None:
                    bits = 8.0 * sum(len(r.payload) for r in codec.encode({name: tensor}, {name: phi}))
                p_list.append(phi)
                rate_list.append(bits / positions)
        timing["rate_points"].append((time.perf_counter() - start) * 1e3)
        stats.append(feature_stats(features))
        labels.append([result.weights[n] for n in features])
        count += 1
    if count == 0 or mfip is None or codec_info is None:
        raise ValueError("calibration needs at least one image")

    loss_rate = fit_loss_rate(loss_samples)
    rate_phi = {n: fit_rate_phi(p, r, codec_info.coded_phi_range) for n, (p, r) in phi_samples.items()}
    scales = tuple(phi_samples)
    predictor = train_fast_predictor(np.array(stats), np.array(labels), scales)
    label_array = np.array(labels)
    calibration: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data,
        "images": count,
        "levels": list(mfip.levels),
        "rate_points": list(phis),
        "input_sizes": sorted([list(s) for s in input_sizes]),
        "mean_weights": dict(zip(scales, label_array.mean(0).tolist())),
        "degenerate_images": degenerate,
        "timing_ms_median": {k: statistics.median(v) for k, v in timing.items() if v},
    }
    samples = {
        "loss_rate": [[n, w, d, r] for n, (ws, ds, rs) in loss_samples.items() for w, d, r in zip(ws, ds, rs)],
        "rate_phi": [[n, p, r] for n, (ps, rs) in phi_samples.items() for p, r in zip(ps, rs)],
    }
    config = bundle.config
    return Profile(
        codec=codec_info,
        backbone=BackboneInfo(bundle.weights, bundle.backbone_fingerprint_for(tasks), config.min_size,
                              config.max_size),
        tasks=tuple(tasks),
        loss_rate=loss_rate,
        rate_phi=rate_phi,
        fast_predictor=predictor,
        calibration=calibration,
        samples=samples,
    )
