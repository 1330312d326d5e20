"""MFIP: importance weights of the FPN scales P2..P5 for one image (MFIBA Sec. 3.1, Fig. 3).

Full mode, for ``n`` scales and ``m`` quality levels::

    P2..P5 ──> precode each scale at m levels (codec.encode + decode, real bytes)     [precode]
         │                    │
         │        n*m variants: one scale replaced, the others lossless
         ▼                    ▼
    [lossless, v_1 ... v_{n*m}] stacked along the batch dim ──> task heads, ONE call per arch [heads]
         │
         ▼
    L[i, j] = 1 - AP(variant (i, j) vs lossless output)        (mean over the requested tasks)  [scoring]
    per level j: min-max normalise L[:, j] across scales; d_i = mean_j; w_i = d_i / sum(d)

The RPN and ROI heads treat each image of a batch independently, so the stacked forward equals
``1 + n*m`` separate ones; ``max_batch`` splits it into chunks when memory is short. When no scale
changes the result at any level (``sum(d) = 0``) the weights are uniform and ``degenerate`` is set.
Min-max normalisation gives the least important scale of every level a 0, so a weight can be exactly
0; allocation then holds that scale at its lowest rate.

Modes (:func:`parse_mfip_mode`): ``full`` (above), ``fast`` (:mod:`.fast_predictor`: feature
statistics -> weights, no heads), ``uniform`` (``1/n`` each), ``fixed:w2,w3,w4,w5`` (given, normalised).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from ..codec.base import FeatureCodec, ScaleRecord
from ..model.shared_pass import shared_cloud_half
from ..model.split import TRANSMITTED_SCALES, CloudHalf
from ..model.zoo import TASK_ARCH, ModelBundle
from .task_loss import task_loss

if TYPE_CHECKING:
    from .fast_predictor import FastPredictor

DEFAULT_LEVELS = 4
MAX_LEVELS = 8
ImageSize = tuple[int, int]
ImportanceFn = Callable[[dict[str, Tensor], list[ImageSize], list[ImageSize]], "Importance"]


@dataclass(frozen=True)
class MfipMode:
    """A parsed ``--mfip`` value: ``kind`` and, for ``fixed``, the normalised weights P2..P5."""

    kind: Literal["full", "fast", "uniform", "fixed"]
    weights: tuple[float, ...] = ()

    def __str__(self) -> str:
        return self.kind if self.kind != "fixed" else "fixed:" + ",".join(f"{w:g}" for w in self.weights)


MFIP_FORMS = "full, fast, uniform or fixed:w2,w3,w4,w5 (four non-negative numbers, not all zero)"


def parse_mfip_mode(text: str) -> MfipMode:
    """Parse ``full``, ``fast``, ``uniform`` or ``fixed:w2,w3,w4,w5``.

    Raises:
        ValueError: anything else; the message lists the accepted forms.
    """
    value = str(text).strip()
    if value in ("full", "fast", "uniform"):
        return MfipMode(value)  # type: ignore[arg-type]
    if value.startswith("fixed:"):
        parts = [p.strip() for p in value[len("fixed:"):].split(",")]
        try:
            weights = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"cannot parse MFIP mode {text!r}: weights must be numbers; use {MFIP_FORMS}") from None
        if len(weights) != len(TRANSMITTED_SCALES):
            raise ValueError(f"MFIP mode {text!r} gives {len(weights)} weights; need {len(TRANSMITTED_SCALES)} "
                             f"(P2..P5), e.g. fixed:0.4,0.3,0.2,0.1")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"MFIP mode {text!r}: weights must be finite, non-negative and not all zero")
        total = sum(weights)
        return MfipMode("fixed", tuple(w / total for w in weights))
    raise ValueError(f"unknown MFIP mode {text!r}; use {MFIP_FORMS}")


@dataclass(frozen=True)
class Importance:
    """MFIP output for one image.

    Attributes:
        weights: scale -> ``w_i`` (non-negative, sum 1).
        mode: the mode that produced them.
        timing_ms: ``precode``, ``heads``, ``scoring`` (full), ``predict`` (fast), and ``total``.
        levels: the ``phi`` of each quality level (full).
        losses: scale -> raw task loss per level (full).
        rate_bits: scale -> payload bits per level, measured while precoding (full).
        degenerate: no scale changed the task output at any level; weights fell back to uniform.
    """

    weights: dict[str, float]
    mode: str
    timing_ms: dict[str, float] = field(default_factory=dict)
    levels: tuple[float, ...] = ()
    losses: dict[str, list[float]] = field(default_factory=dict)
    rate_bits: dict[str, list[float]] = field(default_factory=dict)
    degenerate: bool = False


def quality_levels(phi_range: tuple[float, float], count: int = DEFAULT_LEVELS, integer: bool = False,
                   ) -> tuple[float, ...]:
    """``count`` phi values spread evenly over ``phi_range`` (snapped to integers, de-duplicated, if asked)."""
    if not 1 <= count <= MAX_LEVELS:
        raise ValueError(f"levels must be 1..{MAX_LEVELS}, got {count}")
    low, high = phi_range
    values = np.linspace(low, high, count) if count > 1 else np.array([(low + high) / 2])
    if integer:
        values = np.unique(np.clip(np.round(values), math.ceil(low), math.floor(high)))
    return tuple(float(v) for v in values)


def normalise_losses(losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Min-max normalise ``[n_scales, m_levels]`` losses across scales per level and average.

    Returns:
        ``(d, w, degenerate)``: ``d_i`` the mean normalised loss, ``w = d / sum(d)`` (uniform when the
        sum is 0, flagged by ``degenerate``).
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[0] < 1 or losses.shape[1] < 1:
        raise ValueError(f"losses must be [n_scales, m_levels], got shape {losses.shape}")
    span = losses.max(axis=0) - losses.min(axis=0)
    normalised = np.where(span > 0, (losses - losses.min(axis=0)) / np.where(span > 0, span, 1.0), 0.0)
    d = normalised.mean(axis=1)
    if d.sum() <= 0:
        return d, np.full(len(d), 1.0 / len(d)), True
    return d, d / d.sum(), False


class FullMfip:
    """Full MFIP: precode, batched heads, pseudo-AP losses (see the module docstring).

    Args:
        bundle: the detectors whose heads judge the variants (one shared pass where they share RPN and box
            head: :func:`fpnlink.shared.model.shared_cloud_half`).
        codec: the codec whose distortion is measured.
        tasks: which tasks' losses count (mean over them); each task's architecture runs once.
        levels: phi per quality level, or how many to spread over ``codec.phi_range``.
        max_batch: most variants per heads call (``None``: all ``1 + n*m`` at once).
    """

    def __init__(self, bundle: ModelBundle, codec: FeatureCodec, tasks: Sequence[str] = ("detect",),
                 levels: int | Sequence[float] = DEFAULT_LEVELS, max_batch: int | None = None) -> None:
        archs = list(dict.fromkeys(bundle.archs_for(list(tasks))))
        self.tasks = list(dict.fromkeys(tasks))
        shared = shared_cloud_half([bundle.models[arch] for arch in archs])
        self.archs = archs
        self.heads: dict[str, CloudHalf] = {"shared": shared.eval()} if shared is not None else \
            {arch: bundle.cloud_half(arch).eval() for arch in archs}
        self.codec = codec
        self.levels = quality_levels(codec.phi_range, levels) if isinstance(levels, int) else tuple(map(float, levels))
        if not 1 <= len(self.levels) <= MAX_LEVELS:
            raise ValueError(f"need 1..{MAX_LEVELS} quality levels, got {len(self.levels)}")
        for phi in self.levels:
            codec.check_phi(phi)
        if max_batch is not None and max_batch < 2:
            raise ValueError(f"max_batch must be at least 2 (the lossless reference plus one variant), got {max_batch}")
        self.max_batch = max_batch

    def precode(self, features: dict[str, Tensor]) -> tuple[dict[str, list[Tensor]], dict[str, list[float]]]:
        """Each scale coded and decoded at every level: decoded maps ``[1, C, h, w]`` and payload bits."""
        decoded: dict[str, list[Tensor]] = {}
        bits: dict[str, list[float]] = {}
        context: list[ScaleRecord] = []
        if self.codec.cross_scale:  # a scale decodes with the coarser ones, held at the top level
            context = self.codec.encode(features, dict.fromkeys(features, self.codec.phi_range[1]))
        for name, tensor in features.items():
            decoded[name], bits[name] = [], []
            coarser = [r for r in context if TRANSMITTED_SCALES.index(r.name) > TRANSMITTED_SCALES.index(name)]
            for phi in self.levels:
                records = self.codec.encode({name: tensor}, {name: phi})
                decoded[name].append(self.codec.decode(records + coarser)[name].to(tensor.device, tensor.dtype))
                bits[name].append(8.0 * sum(len(r.payload) for r in records))
        return decoded, bits

    @torch.inference_mode()
    def __call__(self, features: dict[str, Tensor], image_sizes: list[ImageSize],
                 original_sizes: list[ImageSize]) -> Importance:
        """Weights for one image.

        Args:
            features: ``'0'..'3'`` -> ``[1, C, h, w]`` lossless maps from the edge half.
            image_sizes, original_sizes: the edge half's sizes for this one image.
        """
        names = list(features)
        if any(t.shape[0] != 1 for t in features.values()) or len(image_sizes) != 1:
            raise ValueError("full MFIP scores one image at a time ([1, C, h, w] per scale)")
        start = time.perf_counter()
        decoded, bits = self.precode(features)
        precoded = time.perf_counter()

        m = len(self.levels)
        variants = 1 + len(names) * m
        batched = {name: features[name].repeat(variants, 1, 1, 1) for name in names}
        for i, name in enumerate(names):
            for j in range(m):
                batched[name][1 + i * m + j] = decoded[name][j][0]
        outputs = {name: self._run_heads(heads, batched, variants, image_sizes[0], original_sizes[0])
                   for name, heads in self.heads.items()}
        if "shared" in outputs:  # one pass answers every architecture
            outputs = dict.fromkeys(self.archs, outputs["shared"])
        headed = time.perf_counter()

        losses = np.zeros((len(names), m))
        for i in range(len(names)):
            for j in range(m):
                v = 1 + i * m + j
                losses[i, j] = np.mean([task_loss(outputs[TASK_ARCH[t]][v], outputs[TASK_ARCH[t]][0], t)
                                        for t in self.tasks])
        _, weights, degenerate = normalise_losses(losses)
        done = time.perf_counter()
        return Importance(
            weights=dict(zip(names, weights.tolist())),
            mode="full",
            timing_ms={"precode": (precoded - start) * 1e3, "heads": (headed - precoded) * 1e3,
                       "scoring": (done - headed) * 1e3, "total": (done - start) * 1e3},
            levels=self.levels,
            losses={name: losses[i].tolist() for i, name in enumerate(names)},
            rate_bits=bits,
            degenerate=degenerate,
        )

    def _run_heads(self, heads: CloudHalf, batched: dict[str, Tensor], variants: int, image_size: ImageSize,
                   original_size: ImageSize) -> list[dict[str, Tensor]]:
        step = variants if self.max_batch is None else self.max_batch
        results: list[dict[str, Tensor]] = []
        for first in range(0, variants, step):
            chunk = {name: t[first:first + step] for name, t in batched.items()}
            count = next(iter(chunk.values())).shape[0]
            results.extend(heads(chunk, [image_size] * count, [original_size] * count))
        return results


def uniform_importance(names: Sequence[str] = TRANSMITTED_SCALES) -> Importance:
    return Importance(weights={n: 1.0 / len(names) for n in names}, mode="uniform")


def make_importance(mode: MfipMode | str, *, bundle: ModelBundle | None = None, codec: FeatureCodec | None = None,
                    tasks: Sequence[str] = ("detect",), predictor: FastPredictor | None = None,
                    levels: int | Sequence[float] = DEFAULT_LEVELS) -> ImportanceFn:
    """One callable ``(features, image_sizes, original_sizes) -> Importance`` for a mode.

    Raises:
        ValueError: ``full`` without a bundle and codec, ``fast`` without a predictor.
    """
    mode = parse_mfip_mode(mode) if isinstance(mode, str) else mode
    if mode.kind == "full":
        if bundle is None or codec is None:
            raise ValueError("full MFIP needs the model bundle (task heads) and the codec")
        return FullMfip(bundle, codec, tasks, levels)
    if mode.kind == "fast":
        if predictor is None:
            raise ValueError("fast MFIP needs a trained predictor (the profile's fast_predictor; run "
                             "`fpnlink mfiba calibrate`)")
        return predictor.importance
    if mode.kind == "uniform":
        return lambda features, *_: uniform_importance(list(features))
    fixed = dict(zip(TRANSMITTED_SCALES, mode.weights))
    return lambda features, *_: Importance(weights={n: fixed[n] for n in features}, mode=str(mode))
