"""``fpnlink bench ratecontrol``: MFIBA rate control against real frame bytes, and what it costs.

1. Calibrate a profile (full MFIP + multi-pass coding) on generated scenes.
2. Held-out scenes: full MFIP on a few (``t_pre`` full, with its precode/heads/scoring breakdown),
   fast MFIP on all (``t_pre`` fast); their weights compared.
3. For several budgets spread (log-evenly) over the codec's feasible range, stream the held-out scenes
   through :class:`~fpnlink.edge.EdgeAgent` with a :class:`~fpnlink.shared.mfiba.BudgetedCoder` (fast
   MFIP, closed loop, one stream per budget): the rate error is ``|8 * frame.ByteSize() - budget| /
   budget`` of each serialized frame, every byte counted. The backbone time comes from the same frames.
4. The closed form (Eq. 6 + bisection) against ``scipy.optimize.minimize`` on random instances.

Quick mode: 512x512 scenes, 4 calibration images, 6 held-out frames, full MFIP on 2 of them. Full
mode: 800x1216 (torchvision's default resize keeps it).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpnlink.edge import EdgeAgent
from fpnlink.shared.codec import make_codec
from fpnlink.shared.codec.learned import DEFAULT_CHECKPOINT
from fpnlink.shared.mfiba import (
    BudgetedCoder, FullMfip, RateController, ScaleRateModel, allocate, calibrate, closed_form_rates,
    parse_budget, quality_levels,
)
from fpnlink.shared.mfiba.allocate import numeric_rates
from fpnlink.shared.mfiba.control import DEFAULT_TOLERANCE
from fpnlink.shared.model import ModelConfig, load_bundle

from .common import machine, median_ms, write_json
from .split import FULL_SIZE, QUICK_SIZE, scene

BUDGET_FRACTIONS: tuple[float, ...] = (0.2, 0.45, 0.7)
"""Budgets at these fractions of the log-feasible range ``[B_min, B_max]`` of the profile."""
HELD_OUT_SEED = 1000
ALLOC_INSTANCES = 50
TASKS = ["detect"]


def allocation_accuracy(instances: int = ALLOC_INSTANCES, seed: int = 0) -> dict[str, Any]:
    """Largest relative rate difference between the closed form and ``scipy.optimize.minimize``.

    Two problems per random instance (weights ~ Dirichlet, alpha in [1, 100], beta in [0.3, 2]): Eq. 5 at
    a fixed ``lambda'`` (closed form, Eq. 6) and the budgeted, range-clamped problem (:func:`allocate`).
    """
    rng = np.random.default_rng(seed)
    names = ["0", "1", "2", "3"]
    positions = {n: 16384 // 4**i for i, n in enumerate(names)}
    fixed, budgeted = 0.0, 0.0
    for _ in range(instances):
        weights = dict(zip(names, rng.dirichlet(np.ones(4)).tolist()))
        low = 10 ** rng.uniform(0, 1.5, 4)
        high = low * 10 ** rng.uniform(1, 2, 4)
        models = {n: ScaleRateModel(float(10 ** rng.uniform(0, 2)), float(rng.uniform(0.3, 2)), float(low[i]),
                                    float(high[i])) for i, n in enumerate(names)}
        lam = float(10 ** rng.uniform(-3, 1))
        closed = closed_form_rates([weights[n] for n in names], [models[n].alpha for n in names],
                                   [models[n].beta for n in names], lam)
        start = {n: float(closed[i] * rng.uniform(0.5, 2)) for i, n in enumerate(names)}
        numeric = numeric_rates(weights, models, positions, lam=lam, start=start)
        fixed = max(fixed, max(abs(numeric[n] - closed[i]) / closed[i] for i, n in enumerate(names)))
        minimum = sum(low[i] * positions[n] for i, n in enumerate(names))
        maximum = sum(high[i] * positions[n] for i, n in enumerate(names))
        budget = float(10 ** rng.uniform(np.log10(minimum * 1.02), np.log10(maximum * 0.98)))
        plan = allocate(weights, models, positions, budget)
        start = {n: plan.rates[n] * float(rng.uniform(0.8, 1.25)) for n in names}
        numeric = numeric_rates(weights, models, positions, budget_bits=budget, start=start)
        budgeted = max(budgeted, max(abs(numeric[n] - plan.rates[n]) / plan.rates[n] for n in names))
    return {"instances": instances, "fixed_lambda_max_rel_err": fixed, "budgeted_max_rel_err": budgeted,
            "max_rel_err": max(fixed, budgeted)}


def bench_codec(codec_name: str, quick: bool, weights: str, calib_images: int, frames: int, full_frames: int,
                levels: int, tolerance: float, out_dir: Path | None, profile_stem: str = "ratecontrol",
                ) -> dict[str, Any]:
    """Calibrate, then run closed-loop streams at several budgets for one codec (profile saved in ``out_dir``)."""
    height, width = QUICK_SIZE if quick else FULL_SIZE
    config = ModelConfig(min_size=min(height, width), max_size=max(1333, height, width))
    bundle = load_bundle(weights, config, archs=("faster",))
    codec = make_codec(codec_name)
    calib = ((f"scene{i}", scene(height, width, seed=i)) for i in range(calib_images))
    profile = calibrate(calib, bundle, codec, TASKS, levels=levels, data=f"bench scenes 0..{calib_images - 1}")
    if out_dir is not None:
        profile.save(out_dir / f"{profile_stem}_profile_{codec_name}.json")
    assert profile.fast_predictor is not None
    held_out = [scene(height, width, seed=HELD_OUT_SEED + i) for i in range(frames)]

    # MFIP on held-out frames: full (a few) and fast (all), on the edge half's features.
    edge = bundle.edge_half(TASKS).eval()
    full = FullMfip(bundle, codec, TASKS, quality_levels(codec.phi_range, levels, profile.codec.phi_grid == "integer"))
    full_ms: dict[str, list[float]] = {"total": [], "precode": [], "heads": [], "scoring": []}
    fast_ms, weight_mae = [], []
    for index, image in enumerate(held_out):
        with torch.inference_mode():
            features, image_sizes, original_sizes = edge([image])
        fast = profile.fast_predictor.importance(features, image_sizes, original_sizes)
        fast_ms.append(fast.timing_ms["total"])
        if index < full_frames:
            result = full(features, image_sizes, original_sizes)
            for key in full_ms:
                full_ms[key].append(result.timing_ms[key])
            weight_mae.append(float(np.mean([abs(fast.weights[n] - result.weights[n]) for n in features])))

    low, high = RateController(codec, profile).feasible_payload_bits(features)
    budgets = [parse_budget(f"{low * (high / low) ** f / (height * width):.5g}bpp") for f in BUDGET_FRACTIONS]
    per_budget, errors, signed, backbone_ms, assign_ms, passes = [], [], [], [], [], []
    for budget in budgets:
        controller = RateController(codec, profile, tolerance=tolerance)
        coder = BudgetedCoder(controller, profile.fast_predictor.importance, budget)
        agent = EdgeAgent(bundle, codec, TASKS, stream_id=f"bench-ratecontrol-{codec_name}")
        frame_errors = []
        for frame_id, image in enumerate(held_out, start=1):
            encoded = agent.encode(image, frame_id, rate_control=coder)
            coder.observe_frame(encoded.frame_bytes)
            assert encoded.rate_decision is not None
            result = encoded.rate_decision.control
            bits = 8 * encoded.frame_bytes
            target = budget.bits_per_frame((height, width))
            frame_errors.append((bits - target) / target)
            backbone_ms.append(encoded.stage_ms["backbone"])
            assign_ms.append(result.timing_ms["assign"])
            passes.append(result.passes)
        errors.extend(abs(e) for e in frame_errors)
        signed.extend(frame_errors)
        per_budget.append({"budget": budget.text, "bits_per_frame": budget.bits_per_frame((height, width)),
                           "rate_error_median": statistics.median(abs(e) for e in frame_errors),
                           "rate_error_max": max(abs(e) for e in frame_errors),
                           "signed_errors": [round(e, 5) for e in frame_errors]})
    fast_median = median_ms(fast_ms)
    backbone_median = median_ms(backbone_ms)
    return {
        "codec": codec_name,
        "codec_fingerprint": codec.fingerprint,
        "phi_grid": profile.codec.phi_grid,
        "rate_error_median": float(np.median(errors)),
        "rate_error_p95": float(np.percentile(errors, 95)),
        "rate_error_mean_signed": float(np.mean(signed)),
        "within_tolerance_fraction": float(np.mean(np.array(errors) <= tolerance)),
        "frames_per_budget": frames,
        "budgets": per_budget,
        "feasible_payload_bits": [low, high],
        "corrected_fraction": float(np.mean(np.array(passes) > 1)),
        "passes_mean": float(np.mean(passes)),
        "t_pre_ms": {"full": median_ms(full_ms["total"]) if full_ms["total"] else None, "fast": fast_median},
        "t_pre_full_breakdown_ms": {k: median_ms(v) for k, v in full_ms.items() if v and k != "total"},
        "t_assign_ms": median_ms(assign_ms),
        "backbone_ms": backbone_median,
        "fast_mfip_over_backbone": round(fast_median / backbone_median, 5),
        "fast_vs_full_weight_mae": float(np.mean(weight_mae)) if weight_mae else None,
        "calibration": {
            "images": calib_images, "levels": list(profile.calibration["levels"]),
            "timing_ms_median": profile.calibration["timing_ms_median"],
            "mean_weights": profile.calibration["mean_weights"],
            "loss_rate_global": {"alpha": profile.loss_rate.global_fit.alpha, "beta": profile.loss_rate.global_fit.beta,
                                 "cc": profile.loss_rate.global_fit.quality.cc,
                                 "rmse": profile.loss_rate.global_fit.quality.rmse},
            "rate_phi": {n: {"kind": m.kind, "cc": m.quality.cc if m.quality else None,
                             "line_cc": m.line_quality.cc if m.line_quality else None}
                         for n, m in profile.rate_phi.items()},
            "fast_predictor_train": profile.fast_predictor.train,
        },
    }


def run_ratecontrol_bench(quick: bool, codecs: list[str], weights: str = "random:0", calib_images: int | None = None,
                          frames: int | None = None, full_frames: int = 2, levels: int = 4,
                          tolerance: float = DEFAULT_TOLERANCE, out_dir: Path | None = None,
                          profile_stem: str = "ratecontrol") -> dict[str, Any]:
    calib_images = calib_images or (4 if quick else 8)
    frames = frames or (6 if quick else 10)
    results = {name: bench_codec(name, quick, weights, calib_images, frames, full_frames, levels, tolerance, out_dir,
                                 profile_stem) for name in codecs}
    primary = results[codecs[0]]
    accuracy = allocation_accuracy()
    height, width = QUICK_SIZE if quick else FULL_SIZE
    return {
        "bench": "ratecontrol",
        "quick": quick,
        "input_size": [height, width],
        "weights": weights,
        "codec": codecs[0],
        "tolerance": tolerance,
        "rate_error_median": primary["rate_error_median"],
        "rate_error_p95": primary["rate_error_p95"],
        "alloc_vs_numeric_max_rel_err": accuracy["max_rel_err"],
        "alloc_vs_numeric": accuracy,
        "t_pre_ms": primary["t_pre_ms"],
        "t_pre_full_breakdown_ms": primary["t_pre_full_breakdown_ms"],
        "t_assign_ms": primary["t_assign_ms"],
        "backbone_ms": primary["backbone_ms"],
        "fast_mfip_over_backbone": primary["fast_mfip_over_backbone"],
        "codecs": results,
        "machine": machine(),
    }


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    codecs = [c.strip() for c in args.codec.split(",") if c.strip()]
    if "learned" in codecs and not DEFAULT_CHECKPOINT.is_file():
        print(f"skipping the learned codec: no checkpoint at {DEFAULT_CHECKPOINT}")
        codecs.remove("learned")
    if not codecs:
        print("no codec to benchmark")
        return 2
    report = run_ratecontrol_bench(args.quick, codecs, args.weights, args.calib_images, args.frames, args.full_frames,
                                   args.levels, args.tolerance, args.json.parent, args.json.stem)
    write_json(args.json, report)
    for name, result in report["codecs"].items():
        print(f"[{name}] rate error median {result['rate_error_median']:.4f} p95 {result['rate_error_p95']:.4f} "
              f"(corrected {result['corrected_fraction']:.0%} of frames, {result['passes_mean']:.2f} encodings each)")
        print(f"[{name}] t_pre_ms full {result['t_pre_ms']['full']} {result['t_pre_full_breakdown_ms']} "
              f"fast {result['t_pre_ms']['fast']}; t_assign_ms {result['t_assign_ms']}; backbone_ms "
              f"{result['backbone_ms']} (fast/backbone {result['fast_mfip_over_backbone']:.2%}); "
              f"fast-vs-full weight MAE {result['fast_vs_full_weight_mae']}")
    print(f"alloc_vs_numeric_max_rel_err {report['alloc_vs_numeric_max_rel_err']:.3g}")
    print(f"wrote {args.json}")
    return 0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("ratecontrol", help="MFIBA closed-loop rate error, MFIP and allocation cost",
                                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512x512 instead of 800x1216, fewer frames")
    parser.add_argument("--json", type=Path, required=True,
                        help="where to write the report (the profile goes beside it: STEM_profile_CODEC.json)")
    parser.add_argument("--codec", default="quant", help="comma-separated codecs (quant, learned)")
    parser.add_argument("--weights", default="random:0", help="random:SEED, synthetic, coco or a checkpoint path")
    parser.add_argument("--calib-images", type=int, help="calibration scenes (quick 4, full 8)")
    parser.add_argument("--frames", type=int, help="held-out frames per budget (quick 6, full 10)")
    parser.add_argument("--full-frames", type=int, default=2, help="held-out frames that also get full MFIP")
    parser.add_argument("--levels", type=int, default=4, help="MFIP quality levels")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="relative error needing no fix")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.set_defaults(func=_run)
