"""MFIBA models: budgets, Eq. 6 allocation against scipy, Eq. 3 and Eq. 7 fits."""

from __future__ import annotations

import numpy as np
import pytest

from fpnlink.shared.mfiba import (
    InfeasibleBudgetError, ScaleRateModel, allocate, closed_form_rates, fit_cauchy, fit_loss_rate, fit_quadratic,
    fit_rate_phi, parse_budget,
)
from fpnlink.shared.mfiba.allocate import numeric_rates
from fpnlink.shared.model import TRANSMITTED_SCALES

NAMES = list(TRANSMITTED_SCALES)
POSITIONS = {n: 4096 // 4**i for i, n in enumerate(NAMES)}


def _instance(rng: np.random.Generator) -> tuple[dict[str, float], dict[str, ScaleRateModel]]:
    weights = dict(zip(NAMES, rng.dirichlet(np.ones(4)).tolist()))
    low = 10 ** rng.uniform(0, 1.5, 4)
    high = low * 10 ** rng.uniform(1, 2, 4)
    models = {n: ScaleRateModel(float(10 ** rng.uniform(0, 2)), float(rng.uniform(0.3, 2)), float(low[i]),
                                float(high[i])) for i, n in enumerate(NAMES)}
    return weights, models


def _bounds(models: dict[str, ScaleRateModel]) -> tuple[float, float]:
    return (sum(models[n].r_min * POSITIONS[n] for n in NAMES), sum(models[n].r_max * POSITIONS[n] for n in NAMES))


class TestBudget:
    @pytest.mark.parametrize("text, kind, bits", [
        ("0.05bpp", "bpp", 0.05 * 100 * 200),
        (" 2e-2 bpp ", "bpp", 0.02 * 100 * 200),
        ("30KB", "bits", 240_000),
        ("30kB", "bits", 240_000),
        ("2KiB", "bits", 16_384),
        ("240kbit", "bits", 240_000),
        ("12000b", "bits", 12_000),
        ("2Mbps@10fps", "bitrate", 200_000),
        ("500 kbps @ 25 fps", "bitrate", 20_000),
    ])
    def test_forms(self, text, kind, bits):
        budget = parse_budget(text)
        assert budget.kind == kind
        assert budget.bits_per_frame((100, 200)) == pytest.approx(bits)

    @pytest.mark.parametrize("text", ["", "30", "30 parsecs", "bpp", "0bpp", "-1KB", "2Mbps", "2Mbps@0fps",
                                      "1e999KB", "0.05 bpp per frame"])
    def test_bad_strings(self, text):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(text)

    def test_not_a_string(self):
        with pytest.raises(ValueError, match="must be a string"):
            parse_budget(3.0)  # type: ignore[arg-type]


class TestAllocate:
    def test_closed_form_matches_scipy_at_fixed_lambda(self):
        rng = np.random.default_rng(0)
        for _ in range(20):
            weights, models = _instance(rng)
            lam = float(10 ** rng.uniform(-3, 1))
            closed = closed_form_rates([weights[n] for n in NAMES], [models[n].alpha for n in NAMES],
                                       [models[n].beta for n in NAMES], lam)
            start = {n: float(closed[i] * rng.uniform(0.5, 2)) for i, n in enumerate(NAMES)}
            numeric = numeric_rates(weights, models, POSITIONS, lam=lam, start=start)
            for i, n in enumerate(NAMES):
                assert abs(numeric[n] - closed[i]) / closed[i] < 1e-6

    def test_budgeted_allocation_matches_scipy(self):
        rng = np.random.default_rng(1)
        for _ in range(20):
            weights, models = _instance(rng)
            low, high = _bounds(models)
            budget = float(10 ** rng.uniform(np.log10(low * 1.02), np.log10(high * 0.98)))
            plan = allocate(weights, models, POSITIONS, budget)
            start = {n: plan.rates[n] * float(rng.uniform(0.8, 1.25)) for n in NAMES}
            numeric = numeric_rates(weights, models, POSITIONS, budget_bits=budget, start=start)
            for n in NAMES:
                assert abs(numeric[n] - plan.rates[n]) / plan.rates[n] < 1e-6

    def test_bisection_meets_the_budget(self):
        rng = np.random.default_rng(2)
        for _ in range(20):
            weights, models = _instance(rng)
            low, high = _bounds(models)
            budget = float(rng.uniform(low, high))
            plan = allocate(weights, models, POSITIONS, budget)
            assert plan.total_bits == pytest.approx(budget, rel=1e-9)
            assert plan.feasible and not plan.saturated
            for n in NAMES:
                assert models[n].r_min * (1 - 1e-12) <= plan.rates[n] <= models[n].r_max * (1 + 1e-12)

    def test_clamped_bits_go_to_the_other_scales(self):
        models = {n: ScaleRateModel(10.0, 1.0, 1.0, 20.0 if n == "0" else 1000.0) for n in NAMES}
        weights = {"0": 0.7, "1": 0.1, "2": 0.1, "3": 0.1}
        budget = 50.0 * POSITIONS["0"]
        plan = allocate(weights, models, POSITIONS, budget)
        assert plan.clamped == {"0": "max"} and plan.rates["0"] == 20.0
        assert plan.total_bits == pytest.approx(budget, rel=1e-9)
        # The free scales share one lambda' (Eq. 6) and take the 30 * S_0 bits scale 0 could not use.
        for i, n in enumerate(NAMES[1:], start=1):
            assert plan.rates[n] == pytest.approx((weights[n] * 10.0 * 1.0 / (plan.lam / 4**i)) ** 0.5, rel=1e-9)
        assert sum(plan.bits[n] for n in NAMES[1:]) == pytest.approx(30.0 * POSITIONS["0"], rel=1e-9)

    def test_more_weight_more_rate(self):
        models = {n: ScaleRateModel(10.0, 0.8, 0.1, 1e4) for n in NAMES}
        plan = allocate({"0": 0.1, "1": 0.2, "2": 0.3, "3": 0.4}, models, {n: 100 for n in NAMES}, 5000.0)
        rates = [plan.rates[n] for n in NAMES]
        assert rates == sorted(rates)

    def test_zero_weight_gets_the_minimum(self):
        models = {n: ScaleRateModel(10.0, 1.0, 2.0, 100.0) for n in NAMES}
        plan = allocate({"0": 0.5, "1": 0.5, "2": 0.0, "3": 0.0}, models, POSITIONS, 30.0 * POSITIONS["0"])
        assert plan.rates["2"] == 2.0 and plan.rates["3"] == 2.0 and plan.clamped["2"] == "min"

    def test_impossible_budget(self):
        models = {n: ScaleRateModel(10.0, 1.0, 2.0, 100.0) for n in NAMES}
        low, _ = _bounds(models)
        with pytest.raises(InfeasibleBudgetError, match="below the .* bits the codec needs"):
            allocate(dict.fromkeys(NAMES, 0.25), models, POSITIONS, low / 2)
        plan = allocate(dict.fromkeys(NAMES, 0.25), models, POSITIONS, low / 2, on_infeasible="clamp")
        assert not plan.feasible and plan.total_bits == pytest.approx(low)

    def test_budget_above_the_maximum_saturates(self):
        models = {n: ScaleRateModel(10.0, 1.0, 2.0, 100.0) for n in NAMES}
        _, high = _bounds(models)
        plan = allocate(dict.fromkeys(NAMES, 0.25), models, POSITIONS, high * 2)
        assert plan.saturated and plan.total_bits == pytest.approx(high)

    @pytest.mark.parametrize("weights, budget, message", [
        ({"0": 1.0}, 1e5, "same scales"),
        ({"0": -1.0, "1": 1.0, "2": 1.0, "3": 1.0}, 1e5, "non-negative"),
        ({"0": 1.0, "1": 1.0, "2": 1.0, "3": 1.0}, 0.0, "positive"),
    ])
    def test_bad_inputs(self, weights, budget, message):
        models = {n: ScaleRateModel(10.0, 1.0, 2.0, 100.0) for n in NAMES}
        with pytest.raises(ValueError, match=message):
            allocate(weights, models, POSITIONS, budget)

    def test_scale_model_checks(self):
        with pytest.raises(ValueError, match="beta must be positive"):
            ScaleRateModel(1.0, -0.5, 1.0, 2.0)
        with pytest.raises(ValueError, match="exceeds"):
            ScaleRateModel(1.0, 0.5, 3.0, 2.0)


class TestLossRate:
    def test_recovers_alpha_beta(self):
        rng = np.random.default_rng(4)
        w, r = rng.uniform(0.05, 0.6, 120), 10 ** rng.uniform(0, 3, 120)
        fit = fit_cauchy(w, w * 12.5 * r**-0.7, r)
        assert fit.alpha == pytest.approx(12.5, rel=1e-6) and fit.beta == pytest.approx(0.7, rel=1e-6)
        assert fit.quality.cc == pytest.approx(1.0) and fit.quality.rmse < 1e-9

    def test_noisy_fit_beats_the_quadratic_baseline(self):
        rng = np.random.default_rng(5)
        w, r = rng.uniform(0.05, 0.6, 200), 10 ** rng.uniform(0, 3, 200)
        d = w * 3.0 * r**-0.5 * (1 + rng.normal(0, 0.03, 200))
        cauchy, quadratic = fit_cauchy(w, d, r), fit_quadratic(w, d, r)
        assert cauchy.alpha == pytest.approx(3.0, rel=0.05) and cauchy.beta == pytest.approx(0.5, rel=0.05)
        assert cauchy.quality.rmse < quadratic.quality.rmse and cauchy.quality.cc > quadratic.quality.cc

    def test_per_scale_and_global(self):
        rng = np.random.default_rng(6)
        samples = {}
        for i, n in enumerate(NAMES):
            w, r = rng.uniform(0.1, 0.5, 30), 10 ** rng.uniform(1, 3, 30)
            samples[n] = (w, w * (i + 1) * 5.0 * r ** -(0.4 + 0.2 * i), r)
        model = fit_loss_rate(samples)
        for i, n in enumerate(NAMES):
            assert model.scales[n].beta == pytest.approx(0.4 + 0.2 * i, rel=1e-5)
        assert set(model.quadratic) == {"global", *NAMES}

    def test_too_few_samples(self):
        with pytest.raises(ValueError, match="at least 3"):
            fit_cauchy([0.0, 0.5, 0.5], [0.1, 0.2, 0.3], [10, 20, 30])


class TestRatePhi:
    def test_recovers_a_b_and_inverts(self):
        phi = np.repeat(np.linspace(0, 5, 6), 4)
        rates = 3.2 * phi + 1.5 + np.random.default_rng(7).normal(0, 0.01, phi.size)
        model = fit_rate_phi(phi, rates, (0.0, 5.0))
        assert model.kind == "linear"
        assert model.a == pytest.approx(3.2, rel=1e-2) and model.b == pytest.approx(1.5, abs=0.05)
        assert model.phi(10.0) == pytest.approx((10.0 - model.b) / model.a)  # Eq. 8
        assert model.phi(-100.0) == 0.0 and model.phi(1e9) == 5.0  # clamped to phi_range

    def test_convex_rates_get_a_monotone_spline(self):
        phi = np.arange(1.0, 9.0)
        rates = np.array([84, 103, 364, 878, 1639, 2500, 3000, 3500.0])
        model = fit_rate_phi(phi, rates, (1.0, 8.0))
        assert model.kind == "pchip" and model.quality.rmse < model.line_quality.rmse
        grid = np.linspace(1, 8, 300)
        assert (np.diff(model.rate(grid)) >= -1e-9).all()
        for rate in (90.0, 500.0, 2000.0):
            assert model.rate(model.phi(rate)) == pytest.approx(rate, rel=1e-9)

    def test_rates_that_fall_are_refused(self):
        with pytest.raises(ValueError, match="does not rise"):
            fit_rate_phi([1, 2, 3], [30, 20, 10], (1.0, 3.0))
        with pytest.raises(ValueError, match="2 distinct"):
            fit_rate_phi([1, 1], [30, 31], (1.0, 3.0))
