"""The task loss-rate model (MFIBA Eq. 3) and the quadratic baseline of the paper's Table 1.

Eq. 3, Cauchy-distributed loss-rate model, per scale ``i``::

    d_i = w_i * alpha * R_i^(-beta)          (summed over scales: sum_i d_i = sum_i w_i alpha R_i^(-beta))

Calibration samples are ``(w, d, R)`` tuples: the image's MFIP weight of the scale, the task loss when
only that scale is coded at one quality level (``1 - AP`` against the lossless output, see
:mod:`.task_loss`), and the rate of that coding in bits per spatial position. ``alpha, beta`` are
fitted globally (all scales pooled, the paper's Eq. 3) and per scale (what Eq. 6 uses when present;
the authors' public code fits per scale too).

Fitting: nonlinear least squares on the loss itself (the residuals the paper's RMSE is measured in),
parameterised as ``log alpha`` and ``beta`` (positivity for free), started from a linear regression
in log space (``log(d/w) = log alpha - beta log R``) over the samples with ``d > 0``. Samples with
``w = 0`` carry no information about ``alpha`` (the model predicts 0 whatever the rate) and are left
out. Quality is reported like Table 1: Pearson CC and RMSE between measured and predicted losses.

The quadratic baseline is ``d = w (c0 + c1 R + c2 R^2)``, linear least squares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

MIN_SAMPLES = 3
"""Fewest usable samples (``w > 0``, ``R > 0``) a fit accepts."""
BETA_BOUNDS = (1e-4, 20.0)
LOG_ALPHA_BOUND = 60.0
"""Bound on log(alpha) in the fit's rate units (rates over their geometric mean)."""


@dataclass(frozen=True)
class FitQuality:
    """Pearson CC (None when either side is constant) and RMSE between measured and predicted losses."""

    cc: float | None
    rmse: float
    n: int


@dataclass(frozen=True)
class CauchyFit:
    """Eq. 3 for one scale (or all pooled): ``d = w * alpha * R^(-beta)``, ``R`` in bits per position."""

    alpha: float
    beta: float
    quality: FitQuality

    def predict(self, weights: np.ndarray | float, rates: np.ndarray | float) -> np.ndarray:
        return np.asarray(weights, dtype=np.float64) * self.alpha * np.asarray(rates, dtype=np.float64) ** -self.beta


@dataclass(frozen=True)
class QuadraticFit:
    """Baseline: ``d = w * (c0 + c1 R + c2 R^2)``."""

    coef: tuple[float, float, float]
    quality: FitQuality

    def predict(self, weights: np.ndarray | float, rates: np.ndarray | float) -> np.ndarray:
        r = np.asarray(rates, dtype=np.float64)
        c0, c1, c2 = self.coef
        return np.asarray(weights, dtype=np.float64) * (c0 + c1 * r + c2 * r * r)


@dataclass(frozen=True)
class LossRateModel:
    """Eq. 3 fitted globally and per scale, with the quadratic baseline beside it.

    Attributes:
        global_fit: all scales pooled (the paper's single ``alpha, beta``).
        scales: scale -> its own fit (used by allocation).
        quadratic: ``'global'`` and each scale -> the baseline fit.
    """

    global_fit: CauchyFit
    scales: dict[str, CauchyFit]
    quadratic: dict[str, QuadraticFit]

    def for_scale(self, name: str) -> CauchyFit:
        """The scale's own fit, or the global one when the scale has none."""
        return self.scales.get(name, self.global_fit)


def quality(measured: np.ndarray, predicted: np.ndarray) -> FitQuality:
    """Pearson correlation and RMSE, as in the paper's Tables 1 and 2."""
    measured, predicted = np.asarray(measured, np.float64), np.asarray(predicted, np.float64)
    rmse = float(np.sqrt(np.mean((measured - predicted) ** 2))) if measured.size else 0.0
    if measured.size < 2 or np.ptp(measured) == 0 or np.ptp(predicted) == 0:
        return FitQuality(None, rmse, int(measured.size))
    return FitQuality(float(np.corrcoef(measured, predicted)[0, 1]), rmse, int(measured.size))


def _usable(weights: Sequence[float], losses: Sequence[float], rates: Sequence[float],
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w, d, r = (np.asarray(v, dtype=np.float64).ravel() for v in (weights, losses, rates))
    if not (w.shape == d.shape == r.shape):
        raise ValueError(f"weights, losses and rates must have one value per sample, got {w.size}, {d.size}, {r.size}")
    if not (np.isfinite(w).all() and np.isfinite(d).all() and np.isfinite(r).all()):
        raise ValueError("loss-rate samples must be finite")
    if (w < 0).any() or (d < 0).any():
        raise ValueError("weights and losses must be non-negative")
    keep = (w > 0) & (r > 0)
    if keep.sum() < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} samples with w > 0 and R > 0 to fit, got {int(keep.sum())}")
    return w[keep], d[keep], r[keep]


def fit_cauchy(weights: Sequence[float], losses: Sequence[float], rates: Sequence[float]) -> CauchyFit:
    """Fit Eq. 3 ``d = w alpha R^(-beta)`` by nonlinear least squares (see the module docstring).

    Raises:
        ValueError: mismatched lengths, non-finite or negative values, or fewer than 3 usable samples.
    """
    w, d, r = _usable(weights, losses, rates)
    scale = float(np.exp(np.mean(np.log(r))))  # rates in units of their geometric mean: a well-scaled problem
    x = r / scale
    positive = d > 0
    if positive.sum() >= 2 and np.ptp(np.log(x[positive])) > 0:
        slope, intercept = np.polyfit(np.log(x[positive]), np.log(d[positive] / w[positive]), 1)
        start = np.array([intercept, float(np.clip(-slope, *BETA_BOUNDS))])
    else:
        start = np.array([math.log(max(float(np.mean(d / w)), 1e-12)), 1.0])
    start[0] = float(np.clip(start[0], -LOG_ALPHA_BOUND / 2, LOG_ALPHA_BOUND / 2))  # least_squares starts inside
    start[1] = float(np.clip(start[1], BETA_BOUNDS[0] * 2, BETA_BOUNDS[1] / 2))

    def residuals(params: np.ndarray) -> np.ndarray:
        return w * np.exp(params[0]) * x ** -params[1] - d

    def jacobian(params: np.ndarray) -> np.ndarray:
        model = w * np.exp(params[0]) * x ** -params[1]
        return np.stack([model, -model * np.log(x)], axis=1)

    result = least_squares(residuals, start, jac=jacobian, bounds=([-LOG_ALPHA_BOUND, BETA_BOUNDS[0]], [LOG_ALPHA_BOUND, BETA_BOUNDS[1]]),
                           xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=2000)
    log_alpha_scaled, beta = (float(v) for v in result.x)
    alpha = math.exp(log_alpha_scaled) * scale**beta  # alpha' (R/scale)^-beta = alpha R^-beta
    fit = CauchyFit(alpha, beta, FitQuality(None, 0.0, 0))
    return CauchyFit(alpha, beta, quality(d, fit.predict(w, r)))


def fit_quadratic(weights: Sequence[float], losses: Sequence[float], rates: Sequence[float]) -> QuadraticFit:
    """Fit the baseline ``d = w (c0 + c1 R + c2 R^2)`` by linear least squares."""
    w, d, r = _usable(weights, losses, rates)
    scale = float(np.max(r))
    x = r / scale
    design = np.stack([w, w * x, w * x * x], axis=1)
    coef, *_ = np.linalg.lstsq(design, d, rcond=None)
    c = (float(coef[0]), float(coef[1]) / scale, float(coef[2]) / scale**2)
    fit = QuadraticFit(c, FitQuality(None, 0.0, 0))
    return QuadraticFit(c, quality(d, fit.predict(w, r)))


def fit_loss_rate(samples: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]]) -> LossRateModel:
    """Fit Eq. 3 and the baseline globally and per scale.

    Args:
        samples: scale -> ``(weights, losses, rates)`` arrays, one entry per (image, quality level).
            A scale with fewer than 3 usable samples gets no fit of its own (the global one serves it).
    """
    pooled = [np.concatenate([np.asarray(v[k], dtype=np.float64).ravel() for v in samples.values()])
              for k in range(3)]
    scales: dict[str, CauchyFit] = {}
    quadratic = {"global": fit_quadratic(*pooled)}
    for name, (w, d, r) in samples.items():
        usable = (np.asarray(w, dtype=np.float64) > 0) & (np.asarray(r, dtype=np.float64) > 0)
        if usable.sum() >= MIN_SAMPLES:
            scales[name] = fit_cauchy(w, d, r)
            quadratic[name] = fit_quadratic(w, d, r)
    return LossRateModel(global_fit=fit_cauchy(*pooled), scales=scales, quadratic=quadratic)
