"""Bjøntegaard-delta rate and PSNR with piecewise cubic Hermite interpolation (PCHIP).

VCEG-M33 (Bjøntegaard 2001) fits log-rate as a function of PSNR for both curves and averages their
difference over the PSNR range the two curves share; the JCT-VC common test conditions (JCTVC-L1100)
replaced the single cubic polynomial with PCHIP, which is monotone between the supporting points and
does not overshoot. Here::

    BD-rate = 10 ** ( (1 / (q_hi - q_lo)) * ∫_{q_lo}^{q_hi} [log10 R_test(q) - log10 R_anchor(q)] dq ) - 1

in percent, with ``[q_lo, q_hi]`` the overlap of the two PSNR ranges. Negative means the test codec
needs fewer bits for the same quality. BD-PSNR swaps the axes (PSNR as a function of log-rate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator


def _curve(rate: Sequence[float], quality: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    rate_arr, quality_arr = np.asarray(rate, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if rate_arr.shape != quality_arr.shape or rate_arr.ndim != 1 or len(rate_arr) < 2:
        raise ValueError(f"{name}: need two 1-D sequences of equal length >= 2, got {rate_arr.shape}, "
                         f"{quality_arr.shape}")
    if not (np.isfinite(rate_arr).all() and np.isfinite(quality_arr).all() and (rate_arr > 0).all()):
        raise ValueError(f"{name}: rates must be finite and positive, qualities finite")
    return np.log10(rate_arr), quality_arr


def _average_difference(x_anchor: np.ndarray, y_anchor: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                        ) -> float:
    """Mean of ``y_test(x) - y_anchor(x)`` over the shared ``x`` range, each curve PCHIP-interpolated."""
    low, high = max(x_anchor.min(), x_test.min()), min(x_anchor.max(), x_test.max())
    if not high > low:
        raise ValueError(f"the curves do not overlap (shared range [{low:.4g}, {high:.4g}])")
    integrals = []
    for x, y in ((x_anchor, y_anchor), (x_test, y_test)):
        order = np.argsort(x)
        x_sorted, y_sorted = x[order], y[order]
        if np.any(np.diff(x_sorted) <= 0):
            raise ValueError("supporting points must have distinct values on the integration axis")
        integrals.append(PchipInterpolator(x_sorted, y_sorted).integrate(low, high))
    return float((integrals[1] - integrals[0]) / (high - low))


def bd_rate(rate_anchor: Sequence[float], psnr_anchor: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float]) -> float:
    """BD-rate of ``test`` against ``anchor`` in percent (negative: ``test`` saves bits).

    Raises:
        ValueError: fewer than two points, non-positive rates, repeated PSNR values, or PSNR ranges
            that do not overlap.
    """
    log_anchor, q_anchor = _curve(rate_anchor, psnr_anchor, "anchor")
    log_test, q_test = _curve(rate_test, psnr_test, "test")
    return float((10 ** _average_difference(q_anchor, log_anchor, q_test, log_test) - 1) * 100)


def bd_psnr(rate_anchor: Sequence[float], psnr_anchor: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float]) -> float:
    """BD-PSNR of ``test`` against ``anchor`` in dB (positive: ``test`` is better at equal rate)."""
    log_anchor, q_anchor = _curve(rate_anchor, psnr_anchor, "anchor")
    log_test, q_test = _curve(rate_test, psnr_test, "test")
    return _average_difference(log_anchor, q_anchor, log_test, q_test)
