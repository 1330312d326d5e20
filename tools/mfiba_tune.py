"""Per-scale weight gains for an MFIBA profile, chosen on real task accuracy: ``fpnlink mfiba tune``.

The paper refines MFIP's weights by a line search on detection accuracy ("Finetuned MFIBA", Sec. 3.1).
Here the refinement is one gain per scale, shared by every frame and stored in the profile
(:attr:`~fpnlink.shared.mfiba.profile.Profile.weight_gains`), tuned at each of a few budgets: it corrects
what the single-scale variants of MFIP cannot see, e.g. that P3 matters more when P2 is coded coarsely
too, and how much more depends on the budget. Per tuning image::

    image ─> edge half ─> P2..P5 ─┬─> fast MFIP weights (the profile's predictor)
                                  └─> budget_k = payload bits of uniform phi_k (k = 1..K)
    per candidate gains g:  RateController(g)(budget_k) ─> decode ─> heads ─> COCO AP of the task

At each budget the candidate with the highest AP wins when it beats the untuned ``1,...,1`` by more than
``--min-ap-gain``, else the untuned gains stay (:func:`choose_gains`); the profile keeps one gain vector per
budget, at its median rate in payload bits per P2 position, and rate control interpolates between them
(``Profile.gains_at``).
Candidates are the grid ``--grid`` over the ``--scales`` named, the other scales at 1. The table of
every candidate lands in ``calibration.tuning``; ``--reselect`` chooses again from that table, with no images.

Tune on images the benchmark does not evaluate (synthetic data: the train split after the images the
profile was calibrated on; ``--skip`` defaults to their count), and judge the result with ``fpnlink bench
rd`` on val.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..shared.codec import make_codec
from ..shared.errors import FpnlinkError
from ..shared.mfiba import GainPoint, Profile, RateController, load_profile
from ..shared.model import TASK_ARCH, TASKS, ModelConfig, load_bundle
from ..shared.model.split import SCALE_NAMES
from .evaluation import ARCH_METRIC, ApAccumulator, load_dataset

DEFAULT_GRID = (1.0, 2.0, 4.0)
DEFAULT_SCALES = ("1", "2")
"""P3 and P4: P2 is the reference (gains are relative), and P5's Eq. 3 fit is usually too flat to buy."""
DEFAULT_PHIS = (1.0, 2.0, 3.0)
"""Uniform phi whose payloads are the budgets (the codec's top level is left out: every plan saturates there)."""
DEFAULT_MIN_AP_GAIN = 0.005
"""AP by which a candidate must beat the untuned gains at a budget to replace them. Measured on the shipped xscale
profile: gains that won by 0.0013 on 128 tuning images (P3 4 at 6.9 bits/position) cost the edge default 0.0044
box AP on the 100 val images (0.5713 untuned, 0.5669 tuned), so wins that small are noise."""


def candidate_gains(scales: tuple[str, ...], tuned: tuple[str, ...], grid: tuple[float, ...],
                    ) -> list[dict[str, float]]:
    """Every point of ``grid`` over the ``tuned`` scales (the rest at 1), the all-ones vector first."""
    unknown = [n for n in tuned if n not in scales]
    if unknown or not tuned:
        raise ValueError(f"--scales must name some of the profile's scales {list(scales)}, got {list(tuned)}")
    if not grid or any(not g > 0 for g in grid):
        raise ValueError(f"--grid must hold positive gains, got {list(grid)}")
    out = [dict.fromkeys(scales, 1.0)]
    for values in itertools.product(grid, repeat=len(tuned)):
        gains = {**dict.fromkeys(scales, 1.0), **dict(zip(tuned, values))}
        if gains not in out:
            out.append(gains)
    return out


def choose_gains(table: list[dict[str, Any]], min_ap_gain: float = DEFAULT_MIN_AP_GAIN) -> list[dict[str, float]]:
    """Per budget, the row of highest AP (first among equals) if it beats the first, untuned row by more than
    ``min_ap_gain``, else the untuned row's gains."""
    if not table:
        raise ValueError("the tuning table has no candidates")
    if not min_ap_gain >= 0:
        raise ValueError(f"--min-ap-gain must be >= 0, got {min_ap_gain}")
    untuned = table[0]
    chosen = []
    for k in range(len(untuned["ap"])):
        best = max(table, key=lambda row: row["ap"][k])
        chosen.append(best["gains"] if best["ap"][k] > untuned["ap"][k] + min_ap_gain else untuned["gains"])
    return chosen


def with_chosen_gains(profile: Profile, min_ap_gain: float = DEFAULT_MIN_AP_GAIN) -> Profile:
    """``profile`` with its weight gains chosen again (:func:`choose_gains`) from its stored tuning table."""
    tuning = profile.calibration.get("tuning")
    if not tuning:
        raise ValueError("the profile has no tuning table; run `fpnlink mfiba tune` without --reselect first")
    chosen = choose_gains(tuning["candidates"], min_ap_gain)
    points = tuple(GainPoint(rate, gains) for rate, gains in sorted(zip(tuning["rates"], chosen), key=lambda p: p[0]))
    tuning = {**tuning, "chosen": chosen, "min_ap_gain": min_ap_gain}
    return dataclasses.replace(profile, weight_gains=points, calibration={**profile.calibration, "tuning": tuning})


def tune(profile: Profile, data: Path, weights: str | None, images: int, skip: int | None = None,
         split: str = "train", task: str = "detect", tuned: tuple[str, ...] = DEFAULT_SCALES,
         grid: tuple[float, ...] = DEFAULT_GRID, phis: tuple[float, ...] = DEFAULT_PHIS, detections: int = 20,
         progress: bool = True, min_ap_gain: float = DEFAULT_MIN_AP_GAIN) -> Profile:
    """Search the gains (see the module docstring) and return the profile with each budget's best ones.

    ``weights`` is the backbone to load (``None``: the profile's ``backbone.weights``); ``skip`` the images of
    the split passed over first (``None``: as many as the profile was calibrated on, which calibration takes
    from the start of its data).

    Raises:
        ValueError: bad arguments, too few images, a profile without a fast predictor.
        FpnlinkError: a profile that does not match the codec or the backbone.
    """
    if profile.fast_predictor is None:
        raise ValueError("the profile has no fast MFIP predictor; calibrate one with `fpnlink mfiba calibrate`")
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    candidates = candidate_gains(profile.scales, tuned, grid)
    codec = make_codec(profile.codec.name)
    low, high = profile.codec.coded_phi_range
    if not phis or any(not low <= p <= high for p in phis) or list(phis) != sorted(set(phis)):
        raise ValueError(f"--phis must be increasing and lie in the codec's coded range [{low:g}, {high:g}], "
                         f"got {list(phis)}")
    arch = TASK_ARCH[task]
    config = ModelConfig(min_size=profile.backbone.min_size, max_size=profile.backbone.max_size,
                         detections_per_img=detections)
    bundle = load_bundle(weights or profile.backbone.weights, config, archs=(arch,))
    profile.check_compatible(codec, bundle.backbone_fingerprint_for([task]))
    dataset = load_dataset(data, split)
    skip = int(profile.calibration.get("images") or 0) if skip is None else skip
    ids = dataset.image_ids[skip:skip + images]
    if len(ids) < 1 or images < 1:
        raise ValueError(f"{data} {split} has {len(dataset.image_ids)} images; none left after skipping {skip}")
    dataset = dataclasses.replace(dataset, image_ids=ids)
    edge, cloud = bundle.edge_half([task]).eval(), bundle.cloud_half(arch).eval()
    scores = ApAccumulator(dataset)
    start = time.perf_counter()

    frames = []
    finest = profile.scales[0]
    with torch.inference_mode():
        for image_id in tqdm(ids, desc="tune: features", unit="image", disable=not progress):
            features, input_sizes, original_sizes = edge([dataset.image(image_id)])
            budgets = [8.0 * sum(len(r.payload) for r in codec.encode(features, dict.fromkeys(features, phi)))
                       for phi in phis]
            frames.append((image_id, features, input_sizes, original_sizes,
                           profile.fast_predictor.importance(features).weights, budgets))

        rates = [statistics.median(budgets[k] / _positions(features[finest]) for _, features, *_, budgets in frames)
                 for k in range(len(phis))]
        table: list[dict[str, Any]] = []
        for gains in tqdm(candidates, desc="tune: candidates", unit="gains", disable=not progress):
            trial = dataclasses.replace(profile, weight_gains=(GainPoint(1.0, gains),))
            controllers = [RateController(codec, trial, overhead_bits=0.0) for _ in phis]
            errors = []
            for image_id, features, input_sizes, original_sizes, mfip, budgets in frames:
                decoded = []
                for controller, budget in zip(controllers, budgets):
                    result = controller.code(features, mfip, budget)
                    errors.append(abs(result.payload_bits - budget) / budget)
                    decoded.append(codec.decode(result.records))
                batched = {n: torch.cat([d[n] for d in decoded]) for n in features}
                outputs = cloud(batched, input_sizes * len(phis), original_sizes * len(phis))
                for point, output in enumerate(outputs):
                    scores.add((len(table), point), arch, image_id, output)
            aps = [scores.score((len(table), p))[ARCH_METRIC[arch]]["ap"] or 0.0 for p in range(len(phis))]
            table.append({"gains": gains, "ap": aps, "mean_ap": statistics.fmean(aps),
                          "median_rate_error": statistics.median(errors)})
    tuning = {"images": len(ids), "data": f"{data} ({split}, after {skip})", "task": task, "phis": list(phis),
              "rates": rates, "mfip": "fast", "candidates": table, "wall_s": round(time.perf_counter() - start, 1)}
    return with_chosen_gains(dataclasses.replace(profile, calibration={**profile.calibration, "tuning": tuning}),
                             min_ap_gain)


def _positions(tensor: torch.Tensor) -> int:
    return int(tensor.shape[-2] * tensor.shape[-1])


def tuning_summary(profile: Profile) -> str:
    """The candidates' AP at each budget as text, each budget's chosen gains marked ``*``."""
    tuning = profile.calibration["tuning"]
    lines = [f"tuned on {tuning['images']} image(s) of {tuning['data']}, {tuning['task']} AP at the budgets of "
             f"uniform phi {tuning['phis']} ({tuning['wall_s']:.0f} s)"]
    for row in tuning["candidates"]:
        gains = " ".join(f"{SCALE_NAMES.get(n, n)} {g:g}" for n, g in row["gains"].items())
        aps = " / ".join(f"{ap:.4f}{'*' if row['gains'] == chosen else ' '}"
                         for ap, chosen in zip(row["ap"], tuning["chosen"]))
        lines.append(f"  {gains:<28} AP {aps}  mean {row['mean_ap']:.4f}  "
                     f"rate error {100 * row['median_rate_error']:.1f}%")
    lines.append("gains at " + "; ".join(
        f"{p.rate:.3g} bits/position: " + " ".join(f"{SCALE_NAMES.get(n, n)} {g:g}" for n, g in p.gains.items())
        for p in profile.weight_gains))
    return "\n".join(lines)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        profile = load_profile(args.profile)
        if args.reselect:
            tuned = with_chosen_gains(profile, args.min_ap_gain)
        elif args.data is None:
            raise ValueError("--data is required (unless --reselect)")
        else:
            tuned = tune(profile, args.data, args.weights, args.images, args.skip, args.split, args.task,
                         tuple(s.strip() for s in args.scales.split(",") if s.strip()), args.grid, args.phis,
                         args.detections, not args.no_progress, args.min_ap_gain)
    except (ValueError, FpnlinkError) as exc:
        print(f"fpnlink mfiba tune: error: {exc}", file=sys.stderr)
        return 2
    tuned.save(args.out)
    print(tuning_summary(tuned))
    print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fpnlink mfiba tune`` to the ``mfiba`` subcommands."""
    p = subparsers.add_parser("tune", help="per-scale weight gains chosen on real AP -> profile JSON",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", type=Path, help="the calibrated profile to tune")
    p.add_argument("--data", type=Path, help="synthetic dataset folder (`fpnlink data synth`); required unless "
                                             "--reselect")
    p.add_argument("--weights", help="the backbone (default: the one the profile names, e.g. synthetic)")
    p.add_argument("--out", type=Path, required=True, help="tuned profile JSON to write")
    p.add_argument("--images", type=int, default=64, help="tuning images (default 64)")
    p.add_argument("--skip", type=int, help="images of the split to skip first (default: the profile's calibration "
                                            "image count)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="split to tune on")
    p.add_argument("--task", default="detect", choices=TASKS, help="whose AP decides (default detect: box AP)")
    p.add_argument("--scales", default=",".join(DEFAULT_SCALES), help="scales whose gain is searched (0 = P2)")
    p.add_argument("--grid", type=_floats, default=DEFAULT_GRID, help="gains tried on each searched scale")
    p.add_argument("--phis", type=_floats, default=DEFAULT_PHIS, help="uniform phi whose payloads are the budgets")
    p.add_argument("--detections", type=int, default=20, help="results kept per image")
    p.add_argument("--min-ap-gain", type=float, default=DEFAULT_MIN_AP_GAIN,
                   help=f"AP a candidate must win by to replace the untuned gains (default {DEFAULT_MIN_AP_GAIN})")
    p.add_argument("--reselect", action="store_true",
                   help="choose the gains again from the profile's stored tuning table (no images are run)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
