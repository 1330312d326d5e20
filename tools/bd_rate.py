"""Bjøntegaard-delta rate and PSNR: piecewise cubic Hermite (PCHIP, default) or one cubic polynomial.

VCEG-M33 (Bjøntegaard 2001) fits log-rate as a function of PSNR for both curves and averages their
difference over the PSNR range the two curves share; the JCT-VC common test conditions (JCTVC-L1100)
replaced the single cubic polynomial with PCHIP, which is monotone between the supporting points and
does not overshoot. ``method`` picks the fit:

- ``"pchip"``: PCHIP through the points (JCTVC-L1100 / VMAF / the ``bjontegaard`` package); needs >= 2.
- ``"cubic"``: VCEG-M33's least-squares cubic polynomial (exact through 4 points); needs >= 4.

Both are exact when log-rate is a straight line in quality, and both turn a pure rate scaling by
``s`` into a BD-rate of exactly ``(s - 1) * 100``. Here::

    BD-rate = 10 ** ( (1 / (q_hi - q_lo)) * ∫_{q_lo}^{q_hi} [log10 R_test(q) - log10 R_anchor(q)] dq ) - 1

in percent, with ``[q_lo, q_hi]`` the overlap of the two PSNR ranges. Negative means the test codec
needs fewer bits for the same quality. BD-PSNR swaps the axes (PSNR as a function of log-rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.interpolate import PchipInterpolator

Method = Literal["pchip", "cubic"]
METHODS: tuple[str, ...] = ("pchip", "cubic")
CUBIC_MIN_POINTS = 4


def _curve(rate: Sequence[float], quality: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    rate_arr, quality_arr = np.asarray(rate, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if rate_arr.shape != quality_arr.shape or rate_arr.ndim != 1 or len(rate_arr) < 2:
        raise ValueError(f"{name}: need two 1-D sequences of equal length >= 2, got {rate_arr.shape}, "
                         f"{quality_arr.shape}")
    if not (np.isfinite(rate_arr).all() and np.isfinite(quality_arr).all() and (rate_arr > 0).all()):
        raise ValueError(f"{name}: rates must be finite and positive, qualities finite")
    return np.log10(rate_arr), quality_arr


def _integral(x: np.ndarray, y: np.ndarray, low: float, high: float, method: Method) -> float:
    """``∫_low^high y(x) dx`` of the curve through ``(x, y)`` fitted with ``method``."""
    order = np.argsort(x)
    x_sorted, y_sorted = x[order], y[order]
    if np.any(np.diff(x_sorted) <= 0):
        raise ValueError("supporting points must have distinct values on the integration axis")
    if method == "pchip":
        return float(PchipInterpolator(x_sorted, y_sorted).integrate(low, high))
    antiderivative = np.polyint(np.polyfit(x_sorted, y_sorted, 3))
    return float(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))


def _average_difference(x_anchor: np.ndarray, y_anchor: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                        method: Method = "pchip") -> float:
    """Mean of ``y_test(x) - y_anchor(x)`` over the shared ``x`` range, each curve fitted with ``method``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method == "cubic" and min(len(x_anchor), len(x_test)) < CUBIC_MIN_POINTS:
        raise ValueError(f"the cubic (VCEG-M33) fit needs >= {CUBIC_MIN_POINTS} points per curve, got "
                         f"{len(x_anchor)} and {len(x_test)}; use method='pchip'")
    low, high = max(x_anchor.min(), x_test.min()), min(x_anchor.max(), x_test.max())
    if not high > low:
        raise ValueError(f"the curves do not overlap (shared range [{low:.4g}, {high:.4g}])")
    difference = _integral(x_test, y_test, low, high, method) - _integral(x_anchor, y_anchor, low, high, method)
    return float(difference / (high - low))


def bd_rate(rate_anchor: Sequence[float], psnr_anchor: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float], method: Method = "pchip") -> float:
    """BD-rate of ``test`` against ``anchor`` in percent (negative: ``test`` saves bits).

    ``psnr_*`` may be any quality that grows with rate (PSNR, AP...).

    Raises:
        ValueError: fewer than two points (four for ``cubic``), non-positive rates, repeated quality
            values, quality ranges that do not overlap, or an unknown ``method``.
    """
    log_anchor, q_anchor = _curve(rate_anchor, psnr_anchor, "anchor")
    log_test, q_test = _curve(rate_test, psnr_test, "test")
    return float((10 ** _average_difference(q_anchor, log_anchor, q_test, log_test, method) - 1) * 100)


def bd_psnr(rate_anchor: Sequence[float], psnr_anchor: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float], method: Method = "pchip") -> float:
    """BD-PSNR of ``test`` against ``anchor`` in dB (positive: ``test`` is better at equal rate)."""
    log_anchor, q_anchor = _curve(rate_anchor, psnr_anchor, "anchor")
    log_test, q_test = _curve(rate_test, psnr_test, "test")
    return _average_difference(log_anchor, q_anchor, log_test, q_test, method)


def monotone_envelope(rates: Sequence[float], qualities: Sequence[float | None],
                      ) -> tuple[list[float], list[float]]:
    """The operating points no cheaper point matches: sorted by rate, each strictly better than all before.

    Measured task-accuracy curves (AP against bpp) are noisy at the low end and need not rise with rate;
    a point that costs more than another without scoring higher is one no encoder would choose, and
    dropping it makes the quality axis single-valued, as BD interpolation requires. Points with a
    missing or non-finite quality, or a non-positive or non-finite rate, are left out first.
    """
    valid = sorted((float(r), float(q)) for r, q in zip(rates, qualities, strict=True)
                   if q is not None and np.isfinite(q) and np.isfinite(r) and r > 0)
    kept_rates: list[float] = []
    kept_qualities: list[float] = []
    for rate, quality in valid:
        if not kept_qualities or quality > kept_qualities[-1]:
            if kept_rates and rate == kept_rates[-1]:
                kept_rates.pop()
                kept_qualities.pop()
            kept_rates.append(rate)
            kept_qualities.append(quality)
    return kept_rates, kept_qualities


def bd_rate_checked(anchor: Sequence[tuple[float, float | None]], test: Sequence[tuple[float, float | None]],
                    method: Method = "pchip") -> tuple[float | None, str | None]:
    """BD-rate (percent) of measured ``(rate, quality)`` points, or ``None`` and why it cannot be computed.

    Each curve is reduced to its :func:`monotone_envelope` first. Never raises on measured data: too
    few usable points, or quality ranges that do not overlap, give ``(None, reason)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    need = CUBIC_MIN_POINTS if method == "cubic" else 2
    curves = {}
    for name, points in (("anchor", anchor), ("test", test)):
        rates, qualities = monotone_envelope([p[0] for p in points], [p[1] for p in points])
        if len(rates) < need:
            return None, (f"{name} has {len(rates)} point(s) with rising quality (of {len(points)}); "
                          f"BD-rate ({method}) needs {need}")
        curves[name] = (rates, qualities)
    (rate_a, q_a), (rate_t, q_t) = curves["anchor"], curves["test"]
    low, high = max(q_a[0], q_t[0]), min(q_a[-1], q_t[-1])
    if not high > low:
        return None, (f"quality ranges do not overlap: anchor [{q_a[0]:.4g}, {q_a[-1]:.4g}], "
                      f"test [{q_t[0]:.4g}, {q_t[-1]:.4g}]")
    return bd_rate(rate_a, q_a, rate_t, q_t, method), None
