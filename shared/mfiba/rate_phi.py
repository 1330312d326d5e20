"""The rate-phi model (MFIBA Eqs. 7-8): from a planned rate to the codec's rate parameter, per scale.

Eq. 7 is a line per scale, Eq. 8 its inverse clamped to the codec's ``phi_range``::

    R_i(phi_i) = a_i * phi_i + b_i                  (Eq. 7, least squares over measured (phi, R) pairs)
    phi_i      = clamp((R_i - b_i) / a_i, phi_range) (Eq. 8)

Rates are bits per spatial position of the scale, measured from real payload bytes (side information
included). A line fits a learned codec's gain interpolation well, but not every codec: ``quant``'s rate
is convex in its bit depth. When the line's RMS relative error exceeds ``spline_threshold`` (rate
control cares about relative error, at low rates as much as at high ones) and there are at least 3
distinct ``phi``, the model becomes a monotone PCHIP spline through the
per-``phi`` mean rates (made non-decreasing by pool-adjacent-violators first; PCHIP keeps monotone data
monotone); its inverse is found by root finding on the spline, so ``phi(rate(p)) == p``. The line's own
fit quality is kept either way, for the report (Table 2 of the paper).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq

from .loss_rate import FitQuality, quality

SPLINE_THRESHOLD = 0.05
"""RMS relative error of the line (``(line - R) / R``) above which the monotone spline is used."""
MIN_RATE_FRACTION = 1e-6
"""Rates a model predicts are floored at this fraction of its largest rate (a line may cross zero)."""


@dataclass(frozen=True)
class RatePhiModel:
    """One scale's ``R(phi)``: Eq. 7's line, or a monotone spline where the line fits poorly.

    Attributes:
        kind: ``linear`` or ``pchip``.
        a, b: the least-squares line (always fitted; Eq. 7).
        phi_range: the codec's range; Eq. 8's inverse clamps to it.
        knots_phi, knots_rate: the spline's knots (``pchip`` only; non-decreasing rates).
        quality: CC/RMSE of the chosen model on the calibration pairs.
        line_quality: CC/RMSE of the line (Table 2), whichever model is chosen.
    """

    kind: Literal["linear", "pchip"]
    a: float
    b: float
    phi_range: tuple[float, float]
    knots_phi: tuple[float, ...] = ()
    knots_rate: tuple[float, ...] = ()
    quality: FitQuality | None = None
    line_quality: FitQuality | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "pchip"):
            raise ValueError(f"kind must be 'linear' or 'pchip', got {self.kind!r}")
        if not (math.isfinite(self.a) and self.a > 0 and math.isfinite(self.b)):
            raise ValueError(f"the line needs a finite slope a > 0 (rate rises with phi), got a={self.a}, b={self.b}")
        low, high = self.phi_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"phi_range must be finite with low < high, got {self.phi_range}")
        if self.kind == "pchip":
            phis, rates = np.asarray(self.knots_phi), np.asarray(self.knots_rate)
            if len(phis) < 2 or len(phis) != len(rates):
                raise ValueError("a pchip model needs at least 2 knots with one rate each")
            if not (np.isfinite(phis).all() and np.isfinite(rates).all()) or (np.diff(phis) <= 0).any():
                raise ValueError("pchip knots must be finite with strictly increasing phi")
            if (np.diff(rates) < 0).any() or rates[0] <= 0:
                raise ValueError("pchip knot rates must be positive and non-decreasing")
            spline = PchipInterpolator(phis, rates, extrapolate=True)
            object.__setattr__(self, "_spline", spline)
            object.__setattr__(self, "_derivative", spline.derivative())

    # ---------------------------------------------------------------------------------------- forward

    def _raw(self, phi: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return self.a * phi + self.b
        low, high = self.knots_phi[0], self.knots_phi[-1]
        inside = np.clip(phi, low, high)
        value = self._spline(inside)  # type: ignore[attr-defined]
        # Outside the knots: continue with the end slopes (linear extrapolation keeps monotonicity).
        ends = self._derivative(np.array([low, high]))  # type: ignore[attr-defined]
        below = np.where(phi < low, ends[0] * (phi - low), 0.0)
        above = np.where(phi > high, ends[1] * (phi - high), 0.0)
        return value + below + above

    def rate(self, phi: float | np.ndarray) -> float | np.ndarray:
        """Eq. 7: bits per position at ``phi`` (floored at a tiny positive rate)."""
        values = np.asarray(phi, dtype=np.float64)
        top = float(self._raw(np.array(self.phi_range[1])))
        out = np.maximum(self._raw(values), MIN_RATE_FRACTION * max(top, 1e-12))
        return float(out) if out.ndim == 0 else out

    def slope(self, phi: float) -> float:
        """``dR/dphi`` at ``phi`` (the local slope used for one-step corrections)."""
        if self.kind == "linear":
            return self.a
        low, high = self.knots_phi[0], self.knots_phi[-1]
        return float(self._derivative(float(np.clip(phi, low, high))))  # type: ignore[attr-defined]

    @property
    def r_min(self) -> float:
        """``R(phi_min)``: the lowest rate the codec reaches on this scale."""
        return float(self.rate(self.phi_range[0]))

    @property
    def r_max(self) -> float:
        """``R(phi_max)``."""
        return float(self.rate(self.phi_range[1]))

    # ---------------------------------------------------------------------------------------- inverse

    def phi(self, rate: float) -> float:
        """Eq. 8: the ``phi`` whose modelled rate is ``rate``, clamped to ``phi_range``."""
        low, high = self.phi_range
        if not math.isfinite(rate):
            raise ValueError(f"rate must be finite, got {rate}")
        if rate <= self.r_min:
            return low
        if rate >= self.r_max:
            return high
        if self.kind == "linear":
            return float(np.clip((rate - self.b) / self.a, low, high))
        return float(brentq(lambda p: float(self.rate(p)) - rate, low, high, xtol=1e-12, rtol=1e-12))


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of ``values`` (isotonic regression)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values.tolist(), weights.tolist()):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, _, c in blocks])


def fit_rate_phi(phis: Sequence[float], rates: Sequence[float], phi_range: tuple[float, float],
                 kind: Literal["auto", "linear", "pchip"] = "auto",
                 spline_threshold: float = SPLINE_THRESHOLD) -> RatePhiModel:
    """Fit Eq. 7 for one scale, switching to a monotone spline where the line fits poorly.

    Args:
        phis, rates: measured pairs (rates in bits per position, from real payload bytes).
        phi_range: the codec's ``phi_range``.
        kind: ``auto`` (choose by the line's RMS relative error), or force ``linear`` / ``pchip``.

    Raises:
        ValueError: fewer than 2 distinct phi, non-finite or non-positive rates, or rates that fall with phi.
    """
    phi = np.asarray(phis, dtype=np.float64).ravel()
    rate = np.asarray(rates, dtype=np.float64).ravel()
    if phi.shape != rate.shape or not (np.isfinite(phi).all() and np.isfinite(rate).all()):
        raise ValueError("phis and rates must be finite with one rate per phi")
    if (rate <= 0).any():
        raise ValueError("rates must be positive (bits per position of real payloads)")
    distinct = np.unique(phi)
    if len(distinct) < 2:
        raise ValueError(f"need at least 2 distinct phi values to fit R(phi), got {distinct.tolist()}")
    a, b = (float(v) for v in np.polyfit(phi, rate, 1))
    if a <= 0:
        raise ValueError(f"rate does not rise with phi (fitted slope {a:.4g}); is this codec's phi a quality knob?")
    line_quality = quality(rate, a * phi + b)
    relative = float(np.sqrt(np.mean(((a * phi + b - rate) / rate) ** 2)))
    use_spline = kind == "pchip" or (kind == "auto" and relative > spline_threshold and len(distinct) >= 3)
    if not use_spline:
        return RatePhiModel("linear", a, b, tuple(map(float, phi_range)), quality=line_quality,
                            line_quality=line_quality)
    counts = np.array([np.sum(phi == p) for p in distinct], dtype=np.float64)
    means = np.array([np.mean(rate[phi == p]) for p in distinct])
    monotone = _pool_adjacent_violators(means, counts)
    model = RatePhiModel("pchip", a, b, tuple(map(float, phi_range)), tuple(distinct.tolist()),
                         tuple(monotone.tolist()), line_quality=line_quality)
    return RatePhiModel("pchip", a, b, model.phi_range, model.knots_phi, model.knots_rate,
                        quality=quality(rate, np.asarray(model.rate(phi))), line_quality=line_quality)
