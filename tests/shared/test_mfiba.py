"""MFIBA: budgets, Eq. 6 allocation against scipy, Eq. 3 / Eq. 7 fits, MFIP, fast predictor, profile, control."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from fpnlink.shared.codec import make_codec
from fpnlink.shared.errors import FingerprintMismatchError
from fpnlink.shared.mfiba import (
    BackboneInfo, BudgetedCoder, CodecInfo, FullMfip, GainPoint, InfeasibleBudgetError, Profile, RateController, RateDecision,
    ScaleRateModel, allocate,
    closed_form_rates, feature_stats, fit_cauchy, fit_loss_rate, fit_quadratic, fit_rate_phi, load_profile,
    make_importance, normalise_losses, parse_budget, parse_mfip_mode, profile_from_dict, pseudo_ap,
    quality_levels, shipped_profile, train_fast_predictor,
)
from fpnlink.shared.mfiba.allocate import model_loss, numeric_rates
from fpnlink.shared.mfiba.loss_rate import BETA_BOUNDS
from fpnlink.shared.mfiba.calibration import detect_phi_grid, rate_points
from fpnlink.shared.model import TASKS, TRANSMITTED_SCALES

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

    def test_starving_meets_a_budget_below_every_coded_scale(self):
        models = {n: ScaleRateModel(10.0, 1.0, 2.0, 100.0) for n in NAMES}
        weights = {"0": 0.1, "1": 0.2, "2": 0.3, "3": 0.4}
        starve = dict.fromkeys(NAMES, 320.0)
        low, _ = _bounds(models)
        with pytest.raises(InfeasibleBudgetError):
            allocate(weights, models, POSITIONS, 0.6 * low)
        plan = allocate(weights, models, POSITIONS, 0.6 * low, starve_bits=starve)
        assert plan.feasible and plan.total_bits <= 0.6 * low * (1 + 1e-9)
        starved = {n for n, how in plan.clamped.items() if how == "starve"}
        assert starved == {"0"} and plan.bits["0"] == 320.0  # the least important scale, which is also the dearest
        assert plan.rates["0"] == 320.0 / POSITIONS["0"]

    def test_starve_option_never_plans_a_worse_loss(self):
        rng = np.random.default_rng(5)
        for _ in range(20):
            weights, models = _instance(rng)
            starve = {n: float(rng.uniform(0.05, 1.0)) * models[n].r_min * POSITIONS[n] for n in NAMES}
            low, high = _bounds(models)
            budget = float(10 ** rng.uniform(np.log10(low * 1.02), np.log10(high * 0.98)))
            coded = allocate(weights, models, POSITIONS, budget)
            plan = allocate(weights, models, POSITIONS, budget, starve_bits=starve)
            assert plan.feasible and plan.total_bits == pytest.approx(budget, rel=1e-9)
            assert model_loss(weights, models, plan.rates) <= model_loss(weights, models, coded.rates) * (1 + 1e-12)

    def test_budget_below_every_starved_scale(self):
        models = {n: ScaleRateModel(10.0, 1.0, 2.0, 100.0) for n in NAMES}
        starve = {"0": 320.0, "1": 320.0, "2": 320.0, "3": 400.0}  # P5 coded at r_min (2 * 16 bits) is cheaper
        with pytest.raises(InfeasibleBudgetError, match="starved or at its lowest rate"):
            allocate(dict.fromkeys(NAMES, 0.25), models, POSITIONS, 500.0, starve_bits=starve)
        plan = allocate(dict.fromkeys(NAMES, 0.25), models, POSITIONS, 500.0, on_infeasible="clamp",
                        starve_bits=starve)
        assert not plan.feasible and plan.clamped == {"0": "starve", "1": "starve", "2": "starve", "3": "min"}
        assert plan.total_bits == 3 * 320.0 + 2.0 * POSITIONS["3"]
        with pytest.raises(ValueError, match="starve_bits must give every scale"):
            allocate(dict.fromkeys(NAMES, 0.25), models, POSITIONS, 1e4, starve_bits={"0": 320.0})

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

    def test_extreme_log_linear_start_stays_inside_the_bounds(self):
        # A near-zero importance weight with a real loss puts the log-linear start far above log(alpha)'s bound.
        w, d, r = [1e-30, 1e-30, 0.5, 0.5], [0.5, 0.4, 0.3, 0.2], [1.0, 2.0, 4.0, 8.0]
        fit = fit_cauchy(w, d, r)
        assert math.isfinite(fit.alpha) and fit.alpha > 0 and BETA_BOUNDS[0] <= fit.beta <= BETA_BOUNDS[1]

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


class TestMfipPieces:
    @pytest.mark.parametrize("text, kind", [("full", "full"), ("fast", "fast"), ("uniform", "uniform"),
                                            ("fixed:4,3,2,1", "fixed")])
    def test_modes(self, text, kind):
        mode = parse_mfip_mode(text)
        assert mode.kind == kind
        if kind == "fixed":
            assert mode.weights == pytest.approx((0.4, 0.3, 0.2, 0.1))

    @pytest.mark.parametrize("text, message", [("slow", "unknown MFIP mode"), ("fixed:1,2", "need 4"),
                                               ("fixed:a,b,c,d", "must be numbers"), ("fixed:0,0,0,0", "not all zero"),
                                               ("fixed:-1,1,1,1", "non-negative")])
    def test_bad_modes(self, text, message):
        with pytest.raises(ValueError, match=message):
            parse_mfip_mode(text)

    def test_normalise(self):
        losses = np.array([[0.9, 0.5], [0.5, 0.3], [0.1, 0.1], [0.1, 0.2]])
        d, w, degenerate = normalise_losses(losses)
        assert d == pytest.approx([1.0, 0.5, 0.0, 0.125]) and w.sum() == pytest.approx(1.0) and not degenerate
        _, w, degenerate = normalise_losses(np.zeros((4, 3)))
        assert degenerate and w == pytest.approx([0.25] * 4)

    def test_quality_levels(self):
        assert quality_levels((1.0, 8.0), 4, integer=True) == (1.0, 3.0, 6.0, 8.0)
        assert quality_levels((0.0, 3.0), 4) == pytest.approx((0.0, 1.0, 2.0, 3.0))
        with pytest.raises(ValueError, match="1..8"):
            quality_levels((0.0, 3.0), 9)

    def test_pseudo_ap(self):
        gt = {"boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40.0]]), "labels": torch.tensor([1, 2]),
              "scores": torch.tensor([0.9, 0.8])}
        assert pseudo_ap(gt, gt) == pytest.approx(1.0)
        shifted = {**gt, "boxes": gt["boxes"] + 3}
        assert 0 < pseudo_ap(shifted, gt) < 1
        relabelled = {**gt, "labels": torch.tensor([2, 1])}
        assert pseudo_ap(relabelled, gt) == 0.0
        empty = {k: v[:0] for k, v in gt.items()}
        assert pseudo_ap(empty, empty) == 1.0 and pseudo_ap(empty, gt) == 0.0 and pseudo_ap(gt, empty) == 0.0

    def test_keypoint_ap_ignores_detections_without_keypoints(self):
        poses = torch.rand(2, 17, 3, generator=torch.Generator().manual_seed(0)) * 10
        poses[..., 2] = 1
        gt = {"boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40.0]]), "labels": torch.tensor([6, 6]),
              "scores": torch.tensor([0.9, 0.8]), "keypoints": poses}
        moved = {**gt, "keypoints": poses + torch.tensor([1.0, 1.0, 0.0])}
        shapes = {"boxes": torch.tensor([[50, 50, 60, 60.0]]), "labels": torch.tensor([1]),
                  "scores": torch.tensor([0.95]), "keypoints": torch.zeros(1, 17, 3)}

        def with_shape(d: dict) -> dict:
            return {k: torch.cat([shapes[k], d[k]]) for k in d}

        assert pseudo_ap(with_shape(moved), with_shape(gt), "keypoints") == pytest.approx(
            pseudo_ap(moved, gt, "keypoints"))
        assert 0 < pseudo_ap(moved, gt, "keypoints") < 1

    def test_fixed_and_uniform_importance(self):
        features = {n: torch.zeros(1, 1, 2, 2) for n in NAMES}
        assert make_importance("uniform")(features, [], []).weights == dict.fromkeys(NAMES, 0.25)
        assert make_importance("fixed:1,1,2,0")(features, [], []).weights["2"] == pytest.approx(0.5)
        with pytest.raises(ValueError, match="trained predictor"):
            make_importance("fast")


@pytest.fixture(scope="module")
def tiny_features(tiny_bundle) -> list[tuple[dict[str, torch.Tensor], list, list]]:
    """Edge-half outputs of 5 small scenes (2 for fitting a profile, 3 held out)."""
    from fpnlink.tools.synth import render_scene

    edge = tiny_bundle.edge_half(["detect"])
    out = []
    with torch.inference_mode():
        for seed in range(5):
            image, _ = render_scene(np.random.default_rng([42, seed]), 128)
            tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
            out.append(edge([tensor]))
    return out


class TestFullMfip:
    def test_weights_and_one_batched_heads_call(self, tiny_bundle, tiny_features):
        features, image_sizes, original_sizes = tiny_features[0]
        model = tiny_bundle.models["faster"]
        batches: list[int] = []
        hook = model.rpn.register_forward_hook(lambda module, args, out: batches.append(len(args[0].image_sizes)))
        try:
            result = FullMfip(tiny_bundle, make_codec("quant"), ["detect"], levels=2)(
                features, image_sizes, original_sizes)
        finally:
            hook.remove()
        assert batches == [1 + 4 * 2]  # one heads call for faster R-CNN: the reference plus 4 scales x 2 levels
        assert list(result.weights) == NAMES
        assert sum(result.weights.values()) == pytest.approx(1.0) and min(result.weights.values()) >= 0
        assert all(len(result.losses[n]) == 2 and len(result.rate_bits[n]) == 2 for n in NAMES)
        # Lower quality costs fewer bits.
        assert all(result.rate_bits[n] == sorted(result.rate_bits[n]) for n in NAMES)
        assert set(result.timing_ms) == {"precode", "heads", "scoring", "total"}

    def test_max_batch_splits_the_heads_call(self, tiny_bundle, tiny_features):
        features, image_sizes, original_sizes = tiny_features[1]
        batches: list[int] = []
        hook = tiny_bundle.models["faster"].rpn.register_forward_hook(
            lambda module, args, out: batches.append(len(args[0].image_sizes)))
        try:
            chunked = FullMfip(tiny_bundle, make_codec("quant"), ["detect"], levels=[4.0], max_batch=2)(
                features, image_sizes, original_sizes)
        finally:
            hook.remove()
        assert batches == [2, 2, 1]  # the reference and 4 variants in chunks of 2
        assert sum(chunked.weights.values()) == pytest.approx(1.0)

    def test_one_shared_pass_scores_every_task_as_the_separate_halves_do(self, synthetic_bundle):
        from fpnlink.tools.synth import render_scene

        image, _ = render_scene(np.random.default_rng([42, 9]), 128)
        with torch.inference_mode():
            features, image_sizes, original_sizes = synthetic_bundle.edge_half(["detect"])(
                [torch.from_numpy(image).permute(2, 0, 1).float() / 255])
        mfip = FullMfip(synthetic_bundle, make_codec("quant"), TASKS, levels=2)
        assert list(mfip.heads) == ["shared"]
        shared = mfip(features, image_sizes, original_sizes)
        mfip.heads = {arch: synthetic_bundle.cloud_half(arch).eval() for arch in mfip.archs}
        separate = mfip(features, image_sizes, original_sizes)
        for name in NAMES:
            assert shared.losses[name] == pytest.approx(separate.losses[name], abs=1e-6)
        assert shared.weights == pytest.approx(separate.weights, abs=1e-6)

    def test_bad_levels(self, tiny_bundle):
        with pytest.raises(ValueError, match="phi must lie"):
            FullMfip(tiny_bundle, make_codec("quant"), ["detect"], levels=[0.0, 9.0])


class TestFastPredictor:
    def test_trains_on_labels_and_predicts_weights(self):
        rng = np.random.default_rng(8)
        stats = rng.normal(size=(40, 20))
        logits = stats[:, [0, 5, 10, 15]] * 1.5
        labels = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        predictor = train_fast_predictor(stats, labels)
        predicted = predictor.predict_stats(stats)
        assert predicted.shape == (40, 4) and np.allclose(predicted.sum(1), 1) and (predicted >= 0).all()
        assert predictor.train["train_mae"] < 0.5 * predictor.train["prior_mae"]

    def test_round_trip_and_real_features(self, tiny_features):
        stats = np.array([feature_stats(f) for f, _, _ in tiny_features[:3]])
        labels = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
        predictor = train_fast_predictor(stats, labels)
        again = type(predictor).from_params(json.loads(json.dumps(predictor.to_params())))
        weights = again.predict(tiny_features[3][0])
        assert list(weights) == NAMES and sum(weights.values()) == pytest.approx(1.0)
        assert weights == pytest.approx(predictor.predict(tiny_features[3][0]))

    def test_bad_labels(self):
        with pytest.raises(ValueError, match="summing to 1"):
            train_fast_predictor(np.zeros((2, 20)), np.ones((2, 4)))


def _fitted_profile(codec, fit_features, fast: bool = True) -> Profile:
    """A profile whose rate-phi models are fitted on real payloads of ``fit_features`` (no heads)."""
    grid = detect_phi_grid(codec, "3", fit_features[0][0]["3"])
    info = CodecInfo(codec.name, codec.fingerprint, codec.phi_range, grid, codec.starve_phi)
    phis = rate_points(info.coded_phi_range, grid)
    pairs: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in NAMES}
    for features, _, _ in fit_features:
        for n in NAMES:
            positions = features[n].shape[-2] * features[n].shape[-1]
            for phi in phis:
                bits = 8 * len(codec.encode({n: features[n]}, {n: phi})[0].payload)
                pairs[n][0].append(phi)
                pairs[n][1].append(bits / positions)
    rng = np.random.default_rng(9)
    samples = {}
    for n in NAMES:
        w, r = rng.uniform(0.1, 0.4, 12), 10 ** rng.uniform(2, 3.3, 12)
        samples[n] = (w, w * 30.0 * r**-0.6, r)
    predictor = None
    if fast:
        stats = np.array([feature_stats(f) for f, _, _ in fit_features])
        predictor = train_fast_predictor(stats, np.full((len(stats), 4), 0.25))
    return Profile(
        codec=info,
        backbone=BackboneInfo("random:0", "feedfacefeedface", 128, 128),
        tasks=("detect",),
        loss_rate=fit_loss_rate(samples),
        rate_phi={n: fit_rate_phi(*pairs[n], info.coded_phi_range) for n in NAMES},
        fast_predictor=predictor,
        calibration={"images": len(fit_features)},
        samples={"rate_phi": [[n, p, r] for n in NAMES for p, r in zip(*pairs[n])]},
    )


@pytest.fixture(scope="module")
def quant_profile(tiny_features) -> Profile:
    return _fitted_profile(make_codec("quant"), tiny_features[:2])


@pytest.fixture(scope="module")
def xscale_codec():
    from fpnlink.shared.codec.xscale import TINY_CHECKPOINT, CrossScaleCodec

    return CrossScaleCodec(TINY_CHECKPOINT)


@pytest.fixture(scope="module")
def xscale_profile(xscale_codec, tiny_features) -> Profile:
    return _fitted_profile(xscale_codec, tiny_features[:2])


class TestProfile:
    def test_starve_level_is_left_out_of_the_rate_models(self, xscale_codec, xscale_profile, tmp_path):
        assert xscale_profile.codec.starve_phi == xscale_codec.starve_phi == 0.0
        low, high = xscale_profile.codec.coded_phi_range
        assert low == pytest.approx(1e-3) and high == xscale_codec.phi_range[1]
        assert all(phi >= low for _, phi, _ in xscale_profile.samples["rate_phi"])
        loaded = load_profile(xscale_profile.save(tmp_path / "xscale.json"))
        assert loaded.codec == xscale_profile.codec and loaded.rate_phi["0"].phi_range == (low, high)
        older = xscale_profile.to_dict()
        del older["codec"]["starve_phi"]  # profiles from before the field: no starve level
        assert profile_from_dict(older).codec.starve_phi is None

    def test_round_trip(self, quant_profile, tmp_path):
        path = quant_profile.save(tmp_path / "profile.json")
        loaded = load_profile(path)
        assert loaded.codec == quant_profile.codec and loaded.codec.phi_grid == "integer"
        assert loaded.to_dict() == json.loads(path.read_text())
        for n in NAMES:
            assert loaded.rate_phi[n].rate(4.5) == pytest.approx(quant_profile.rate_phi[n].rate(4.5))

    @pytest.mark.parametrize("edit, message", [
        (lambda d: d.update(format="fpnlink.mfiba.profile/0"), "format must be"),
        (lambda d: d.pop("codec"), "codec is missing"),
        (lambda d: d["codec"].update(phi_range=[8, 1]), "codec.phi_range"),
        (lambda d: d["codec"].update(phi_grid="hex"), "codec.phi_grid"),
        (lambda d: d["codec"].update(starve_phi=16.0), "codec.starve_phi must lie at the low end"),
        (lambda d: d["codec"].update(starve_phi="low"), "codec.starve_phi must be a finite number"),
        (lambda d: d["backbone"].update(min_size="128"), "backbone.min_size"),
        (lambda d: d.update(tasks=["count"]), "tasks must be"),
        (lambda d: d["loss_rate"]["global"].update(beta=-0.5), "loss_rate.global.beta must be positive"),
        (lambda d: d["loss_rate"]["scales"]["2"].update(alpha="big"), "loss_rate.scales.2.alpha must be a finite"),
        (lambda d: d["loss_rate"]["scales"]["1"].update(cc=3.0), "loss_rate.scales.1.cc must lie in"),
        (lambda d: d["rate_phi"]["0"].update(a=0.0), "rate_phi.0.a must be positive"),
        (lambda d: d["rate_phi"]["0"].update(kind="cubic"), "rate_phi.0.kind"),
        (lambda d: d["rate_phi"]["1"].update(knots_rate=[5.0, 1.0]), "rate_phi.1"),
        (lambda d: d["fast_predictor"]["layers"][0].update(bias=[1.0]), "fast_predictor.layers\\[0\\].bias"),
        (lambda d: d.update(rate_unit="bytes"), "rate_unit"),
        (lambda d: d.update(weight_gains=[{"rate": 1.0, "gains": {"1": 0.0}}]),
         "weight_gains\\[0\\].gains.1 must be positive"),
        (lambda d: d.update(weight_gains=[{"rate": 1.0, "gains": {"7": 2.0}}]), "names scales \\['7'\\]"),
        (lambda d: d.update(weight_gains=[{"rate": -1.0, "gains": {}}]), "weight_gains\\[0\\].rate must be positive"),
        (lambda d: d.update(weight_gains=[{"rate": 2.0, "gains": {}}, {"rate": 1.0, "gains": {}}]),
         "increasing rate"),
        (lambda d: d.update(weight_gains={"1": 2.0}), "weight_gains must be a list"),
    ])
    def test_bad_profiles_name_the_field(self, quant_profile, tmp_path, edit, message):
        broken = copy.deepcopy(quant_profile.to_dict())
        edit(broken)
        with pytest.raises(ValueError, match=message):
            profile_from_dict(broken)
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match="invalid MFIBA profile"):
            load_profile(path)

    def test_weight_gains_round_trip_and_scale_the_weights(self, quant_profile, tmp_path):
        assert quant_profile.weight_gains == () and quant_profile.gains_at(1.0) == dict.fromkeys(NAMES, 1.0)
        tuned = dataclasses.replace(quant_profile, weight_gains=(GainPoint(1.0, {"1": 4.0}), GainPoint(4.0, {})))
        loaded = load_profile(tuned.save(tmp_path / "tuned.json"))
        assert loaded.weight_gains == tuned.weight_gains
        assert loaded.gains_at(0.5)["1"] == pytest.approx(4.0) and loaded.gains_at(9.0)["1"] == pytest.approx(1.0)
        assert loaded.gains_at(2.0) == pytest.approx({"0": 1.0, "1": 2.0, "2": 1.0, "3": 1.0})  # log-linear
        assert loaded.gained_weights(dict.fromkeys(NAMES, 0.25), 1.0) == pytest.approx(
            {"0": 1 / 7, "1": 4 / 7, "2": 1 / 7, "3": 1 / 7})
        with pytest.raises(ValueError, match="positive and finite"):
            dataclasses.replace(quant_profile, weight_gains=(GainPoint(1.0, {"1": float("nan")}),))
        with pytest.raises(ValueError, match="does not have"):
            dataclasses.replace(quant_profile, weight_gains=(GainPoint(1.0, {"P3": 2.0}),))
        with pytest.raises(ValueError, match="increasing"):
            dataclasses.replace(quant_profile, weight_gains=(GainPoint(2.0, {}), GainPoint(2.0, {})))

    def test_unreadable_files(self, tmp_path):
        with pytest.raises(ValueError, match="no MFIBA profile"):
            load_profile(tmp_path / "missing.json")
        (tmp_path / "bad.json").write_text("{not json")
        with pytest.raises(ValueError, match="cannot read"):
            load_profile(tmp_path / "bad.json")

    def test_compatibility(self, quant_profile):
        quant_profile.check_compatible(make_codec("quant"), "feedfacefeedface")
        with pytest.raises(FingerprintMismatchError, match="codec quant"):
            quant_profile.check_compatible(make_codec("quant", zlib_level=1), "feedfacefeedface")
        with pytest.raises(FingerprintMismatchError, match="backbone"):
            quant_profile.check_compatible(make_codec("quant"), "0000")

    def test_shipped_profile_is_the_compatible_one(self, quant_profile, tmp_path):
        quant_profile.save(tmp_path / "a-quant.json")
        assert shipped_profile(make_codec("quant"), "feedfacefeedface", tmp_path).to_dict() == quant_profile.to_dict()
        assert shipped_profile(make_codec("quant", zlib_level=1), "feedfacefeedface", tmp_path) is None
        assert shipped_profile(make_codec("quant"), "0000", tmp_path) is None
        (tmp_path / "b-broken.json").write_text("{not json")
        with pytest.raises(ValueError, match="cannot read"):
            shipped_profile(make_codec("quant"), "0000", tmp_path)


class TestControl:
    def test_quant_lands_within_tolerance(self, quant_profile, tiny_features):
        codec = make_codec("quant")
        held_out = tiny_features[2:]
        low = sum(quant_profile.rate_phi[n].r_min * _positions(held_out[0][0], n) for n in NAMES)
        high = sum(quant_profile.rate_phi[n].r_max * _positions(held_out[0][0], n) for n in NAMES)
        errors = []
        for fraction in (0.3, 0.6, 0.9):
            budget = low * (high / low) ** fraction
            controller = RateController(codec, quant_profile, tolerance=0.03, overhead_bits=0)
            for features, _, _ in held_out:
                result = controller.code(features, quant_profile.fast_predictor.predict(features), budget)
                actual = 8 * sum(len(r.payload) for r in result.records)
                assert actual == result.payload_bits and result.passes in (1, 2)
                assert set(result.planned_bits) == set(NAMES) and result.allocation.feasible
                assert all(float(p).is_integer() for p in result.phi.values())  # quant: integer bit depths
                errors.append(abs(actual - budget) / budget)
        assert np.median(errors) <= 0.03 and max(errors) <= 0.10, errors

    def test_weight_gains_move_bits_to_their_scale(self, xscale_codec, xscale_profile, tiny_features):
        features = tiny_features[2][0]
        budget = _mid_payload_bits(xscale_profile, features)
        weights = dict.fromkeys(NAMES, 0.25)
        plain = RateController(xscale_codec, xscale_profile, overhead_bits=0).code(features, weights, budget)
        tuned = dataclasses.replace(xscale_profile, weight_gains=(GainPoint(1.0, {"1": 8.0}),))
        gained = RateController(xscale_codec, tuned, overhead_bits=0).code(features, weights, budget)
        assert gained.planned_bits["1"] > plain.planned_bits["1"] and gained.phi["1"] >= plain.phi["1"]
        assert sum(gained.planned_bits.values()) == pytest.approx(sum(plain.planned_bits.values()), rel=1e-6)

    def test_impossible_budget_is_clamped_and_flagged(self, quant_profile, tiny_features):
        controller = RateController(make_codec("quant"), quant_profile)
        features = tiny_features[3][0]
        result = controller.code(features, dict.fromkeys(NAMES, 0.25), 1000.0)
        assert not result.allocation.feasible and all(p == 1.0 for p in result.phi.values())

    def test_budgeted_coder_returns_its_decision(self, quant_profile, tiny_features):
        codec = make_codec("quant")
        features, image_sizes, original_sizes = tiny_features[3]
        controller = RateController(codec, quant_profile)
        payload_budget = _mid_payload_bits(quant_profile, features)
        budget = parse_budget(f"{payload_budget + controller.overhead_bits:.0f}b")
        coder = BudgetedCoder(controller, quant_profile.fast_predictor.importance, budget)
        decision = coder(features, image_sizes, original_sizes)
        assert isinstance(decision, RateDecision) and coder.infeasible_frames == 0
        weights = decision.importance.weights
        assert set(weights) == set(NAMES) and sum(weights.values()) == pytest.approx(1.0)
        control = decision.control
        low, high = codec.phi_range
        assert set(control.phi) == set(NAMES) and all(low <= p <= high and float(p).is_integer()
                                                      for p in control.phi.values())
        assert control.budget_bits == budget.bits_per_frame(original_sizes[0])
        assert sum(control.planned_bits.values()) == pytest.approx(payload_budget, abs=len(NAMES))
        assert control.payload_bits == 8 * sum(len(r.payload) for r in control.records)
        assert abs(control.relative_error) < 0.10

    def test_observe_frame_takes_bytes_in_both_classes(self, quant_profile, tiny_features):
        features, image_sizes, original_sizes = tiny_features[3]
        budget = _mid_payload_bits(quant_profile, features)
        weights = quant_profile.fast_predictor.importance(features, image_sizes, original_sizes).weights
        direct = RateController(make_codec("quant"), quant_profile, ema=1.0, overhead_bits=0)
        coder = BudgetedCoder(RateController(make_codec("quant"), quant_profile, ema=1.0, overhead_bits=0),
                              quant_profile.fast_predictor.importance, parse_budget(f"{budget:.0f}b"))
        payload_bits = direct.code(features, weights, budget).payload_bits
        assert coder(features, image_sizes, original_sizes).control.payload_bits == payload_bits
        frame_bytes = payload_bits // 8 + 100  # 100 bytes of framing
        direct.observe_frame(frame_bytes)
        coder.observe_frame(frame_bytes)
        assert direct.overhead_bits == coder.controller.overhead_bits == 800.0

    def test_budget_below_every_coded_scale_starves_one(self, xscale_codec, xscale_profile, tiny_features):
        features = {n: tiny_features[3][0][n] for n in NAMES}
        coded_low = sum(xscale_profile.rate_phi[n].r_min * _positions(features, n) for n in NAMES)
        controller = RateController(xscale_codec, xscale_profile, overhead_bits=0)
        low, high = controller.feasible_payload_bits(features)
        assert low == 4 * controller.starve_bits(features)["0"] and high > coded_low > low
        for budget in (0.35 * coded_low, 0.5 * coded_low):
            controller = RateController(xscale_codec, xscale_profile, overhead_bits=0)
            result = controller.code(features, {"0": 0.1, "1": 0.3, "2": 0.3, "3": 0.3}, budget)
            actual = 8 * sum(len(r.payload) for r in result.records)
            assert result.allocation.feasible and result.phi["0"] == xscale_codec.starve_phi
            assert all(result.phi[n] > xscale_codec.starve_phi for n in ("2", "3"))
            assert abs(actual - budget) / budget <= 0.05, (budget, actual, result.phi)
            decoded = xscale_codec.decode(result.records)
            assert set(decoded) == set(NAMES) and decoded["0"].shape == features["0"].shape

    def test_corrections_are_bounded_and_the_closest_encoding_is_sent(self, xscale_codec, xscale_profile,
                                                                        tiny_features):
        features = {n: tiny_features[3][0][n] for n in NAMES}
        weights = dict.fromkeys(NAMES, 0.25)
        budget = _mid_payload_bits(xscale_profile, features)
        errors = {}
        for max_passes in (1, 2, 3):
            controller = RateController(xscale_codec, xscale_profile, overhead_bits=0, tolerance=0.001,
                                        max_passes=max_passes)
            result = controller.code(features, weights, budget)
            assert 1 <= result.passes <= max_passes
            errors[max_passes] = abs(result.payload_bits - budget)
        assert errors[3] <= errors[2] <= errors[1]
        with pytest.raises(ValueError, match="max_passes >= 1"):
            RateController(xscale_codec, xscale_profile, max_passes=0)

    def test_wrong_scales(self, quant_profile, tiny_features):
        controller = RateController(make_codec("quant"), quant_profile)
        features = {n: t for n, t in tiny_features[3][0].items() if n != "3"}
        with pytest.raises(ValueError, match="cover the profile's scales"):
            controller.code(features, dict.fromkeys(features, 1 / 3), 1e6)


def _positions(features: dict[str, torch.Tensor], name: str) -> int:
    return int(features[name].shape[-2] * features[name].shape[-1])


def _mid_payload_bits(profile: Profile, features: dict[str, torch.Tensor]) -> float:
    """The geometric middle of the profile's feasible payload bits for ``features``."""
    low = sum(profile.rate_phi[n].r_min * _positions(features, n) for n in NAMES)
    high = sum(profile.rate_phi[n].r_max * _positions(features, n) for n in NAMES)
    return float((low * high) ** 0.5)
