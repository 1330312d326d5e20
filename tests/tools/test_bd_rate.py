"""BD-rate against published reference values and against values derived exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fpnlink.tools.bd_rate import bd_psnr, bd_rate, bd_rate_checked, monotone_envelope

# JCTVC-E137 curve pairs with the BD-rates of the JCT-VC PCHIP method, as pinned by Netflix VMAF's
# python/test/bd_rate_calculator_test.py (BDrateCalculatorJCTVCTest; fractions there, percent here).
E137 = [
    ([108048.8736, 61279.976, 33905.6656, 18883.6928], [43.6471, 40.3953, 37.247, 34.2911],
     [108061.2784, 61299.9936, 33928.7472, 18910.912], [43.6768, 40.4232, 37.2761, 34.3147],
     -0.465215420752807),
    ([40433.8848, 7622.7456, 2394.488, 1017.6184], [37.5761, 35.3756, 33.8977, 32.0603],
     [40370.12, 7587.0024, 2390.0944, 1017.0984], [37.5982, 35.4025, 33.9194, 32.0822],
     -1.8779823450567612),
]
# VCEG-M33 cubic-polynomial BD-rates of two widely circulated curve pairs: the classic example of the
# Bjontegaard_metric scripts (anchor R1/PSNR1, test R2/PSNR2) and "Test 1" of the FAU-LMS bjontegaard
# package; reference values evaluated independently with numpy.polyfit/polyint.
CUBIC = [
    ([686.76, 309.58, 157.11, 85.95], [40.28, 37.18, 34.24, 31.42],
     [893.34, 407.8, 204.93, 112.75], [40.39, 37.21, 34.17, 31.24], 31.397374054908013),
    ([9487.76, 4593.60, 2486.44, 1358.24], [40.037, 38.615, 36.845, 34.851],
     [9787.80, 4469.00, 2451.52, 1356.24], [40.121, 38.651, 36.970, 34.987], -4.420462706090111),
]
ANCHOR_RATE, ANCHOR_PSNR = CUBIC[1][0], CUBIC[1][1]
METHODS = ("pchip", "cubic")


class TestReferenceValues:
    @pytest.mark.parametrize("case", E137, ids=["E137-1", "E137-2"])
    def test_pchip_matches_jctvc_e137(self, case: tuple) -> None:
        *curves, expected = case
        assert bd_rate(*curves) == pytest.approx(expected, abs=1e-6)

    @pytest.mark.parametrize("case", CUBIC, ids=["classic", "fau-test1"])
    def test_cubic_matches_vceg_m33(self, case: tuple) -> None:
        *curves, expected = case
        assert bd_rate(*curves, method="cubic") == pytest.approx(expected, abs=1e-6)

    @pytest.mark.parametrize("case", E137 + CUBIC)
    def test_methods_agree_on_well_behaved_curves(self, case: tuple) -> None:
        *curves, _ = case
        assert bd_rate(*curves, method="cubic") == pytest.approx(bd_rate(*curves, method="pchip"), abs=0.05)


class TestExactValues:
    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("scale", [0.5, 0.8, 1.3, 2.0])
    def test_pure_rate_scaling_gives_s_minus_one(self, method: str, scale: float) -> None:
        test_rate = [r * scale for r in ANCHOR_RATE]
        assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, test_rate, ANCHOR_PSNR, method) == pytest.approx(
            (scale - 1) * 100, abs=1e-9)

    @pytest.mark.parametrize("method", METHODS)
    def test_identical_curves_give_zero(self, method: str) -> None:
        assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR, method) == pytest.approx(0, abs=1e-12)
        assert bd_psnr(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR, method) == pytest.approx(0, abs=1e-12)

    @pytest.mark.parametrize("method", METHODS)
    def test_constant_quality_shift_gives_bd_psnr(self, method: str) -> None:
        shifted = [q + 0.7 for q in ANCHOR_PSNR]
        assert bd_psnr(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, shifted, method) == pytest.approx(0.7, abs=1e-9)

    @pytest.mark.parametrize("method", METHODS)
    def test_log_linear_curves_match_the_closed_form(self, method: str) -> None:
        # log10 R = a + b q on both curves: the mean difference over [lo, hi] is da + db (lo + hi) / 2.
        q_anchor, q_test = np.array([30.0, 33.0, 36.0, 39.0]), np.array([31.0, 34.0, 37.0, 40.0])
        rate_anchor, rate_test = 10 ** (1.0 + 0.1 * q_anchor), 10 ** (0.8 + 0.11 * q_test)
        low, high = 31.0, 39.0
        expected = (10 ** (-0.2 + 0.01 * (low + high) / 2) - 1) * 100
        assert bd_rate(rate_anchor, q_anchor, rate_test, q_test, method) == pytest.approx(expected, abs=1e-9)

    def test_cubic_is_exact_for_cubic_log_rate(self) -> None:
        q = np.array([30.0, 32.5, 36.0, 40.0])
        cubic = np.array([2e-4, -0.02, 0.8, -5.0])
        shift = 0.05
        rate_anchor, rate_test = 10 ** np.polyval(cubic, q), 10 ** (np.polyval(cubic, q) + shift)
        assert bd_rate(rate_anchor, q, rate_test, q, "cubic") == pytest.approx((10 ** shift - 1) * 100, abs=1e-8)

    def test_swapping_anchor_and_test_inverts_the_ratio(self) -> None:
        *curves, _ = E137[1]
        forward = bd_rate(*curves) / 100 + 1
        backward = bd_rate(curves[2], curves[3], curves[0], curves[1]) / 100 + 1
        assert forward * backward == pytest.approx(1.0, abs=1e-12)


class TestInvalidInput:
    def test_length_mismatch(self) -> None:
        with pytest.raises(ValueError, match="equal length"):
            bd_rate([1, 2, 3], [1, 2], [1, 2], [1, 2])

    def test_single_point(self) -> None:
        with pytest.raises(ValueError, match=">= 2"):
            bd_rate([1], [1], [1, 2], [1, 2])

    def test_non_positive_rate(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            bd_rate([0, 2], [1, 2], [1, 2], [1, 2])

    def test_repeated_quality(self) -> None:
        with pytest.raises(ValueError, match="distinct"):
            bd_rate([1, 2, 3], [1, 1, 2], [1, 2], [1, 2])

    def test_no_overlap(self) -> None:
        with pytest.raises(ValueError, match="overlap"):
            bd_rate([1, 2], [1, 2], [1, 2], [3, 4])

    def test_cubic_needs_four_points(self) -> None:
        with pytest.raises(ValueError, match="needs >= 4"):
            bd_rate([1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], "cubic")

    def test_unknown_method(self) -> None:
        with pytest.raises(ValueError, match="method"):
            bd_rate([1, 2], [1, 2], [1, 2], [1, 2], "akima")  # type: ignore[arg-type]


class TestMeasuredCurves:
    def test_envelope_drops_dominated_and_missing_points(self) -> None:
        rates, qualities = monotone_envelope([4, 1, 2, 3, 5, 6], [0.3, 0.1, 0.05, 0.2, None, math.nan])
        assert (rates, qualities) == ([1.0, 3.0, 4.0], [0.1, 0.2, 0.3])

    def test_envelope_keeps_the_better_of_equal_rates(self) -> None:
        assert monotone_envelope([1, 1, 2], [0.1, 0.2, 0.3]) == ([1.0, 2.0], [0.2, 0.3])

    def test_checked_value_equals_bd_rate_on_clean_curves(self) -> None:
        *curves, expected = E137[0]
        value, reason = bd_rate_checked(list(zip(curves[0], curves[1])), list(zip(curves[2], curves[3])))
        assert reason is None and value == pytest.approx(expected, abs=1e-6)

    def test_checked_reports_why_not(self) -> None:
        value, reason = bd_rate_checked([(1.0, 0.2)], [(1.0, 0.1), (2.0, 0.3)])
        assert value is None and "anchor has 1 point" in reason
        value, reason = bd_rate_checked([(1.0, 0.1), (2.0, 0.2)], [(1.0, 0.5), (2.0, 0.6)])
        assert value is None and "do not overlap" in reason
        value, reason = bd_rate_checked([(1.0, 0.0), (2.0, 0.0)], [(1.0, 0.1), (2.0, 0.2)])
        assert value is None and "rising quality" in reason

    def test_checked_scaling_on_ap_like_curves(self) -> None:
        anchor = [(0.05, 0.10), (0.1, 0.21), (0.2, 0.30), (0.4, 0.33)]
        test = [(bpp * 0.75, ap) for bpp, ap in anchor]
        for method in METHODS:
            value, reason = bd_rate_checked(anchor, test, method)  # type: ignore[arg-type]
            assert reason is None and value == pytest.approx(-25.0, abs=1e-9)
