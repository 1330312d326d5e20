"""MFIBA calibration and its report: ``fpnlink mfiba {calibrate,report}`` (``tune``: :mod:`.mfiba_tune`).

::

    fpnlink mfiba calibrate --data DIR --weights W --codec C --out profile.json
                            [--images N --levels M --points P --min-size --max-size --tasks detect,...
                             --detections K]
        DIR: an image folder, a COCO json, or synth:N[:SEED[:SIZE]] (generated scenes). Runs the edge
        half, full MFIP (m levels, batched heads) and multi-pass coding per image, then fits Eq. 3,
        Eq. 7 and the fast predictor (fpnlink.shared.mfiba.calibration).
    fpnlink mfiba report profile.json [--out DIR]
        prints the fits (CC/RMSE like the paper's Tables 1-2) and writes loss_rate.png (Fig. 6: task
        loss / w against rate, Eq. 3 and the quadratic baseline) and rate_phi.png (Fig. 7: R against phi).

Calibrate at the input size the edge will run (``--min-size/--max-size``): the rates are per position
of each scale, but side information and content statistics still depend on the size. ``--detections``
caps the results per image as the cloud will (fpnlink's synthetic scenes hold at most 9 objects: 20 is
what ``bench rd`` keeps there, and it makes the mask and keypoint heads five times cheaper than 100).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..shared.codec import available_codecs, make_codec
from ..shared.errors import FpnlinkError
from ..shared.mfiba import Profile, calibrate, load_profile
from ..shared.mfiba.importance import MAX_LEVELS
from ..shared.model import TASK_ARCH, TASKS, ModelConfig, load_bundle
from ..shared.model.split import SCALE_NAMES
from . import mfiba_tune
from .codec.images import iter_images


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks or any(t not in TASKS for t in tasks):
        raise argparse.ArgumentTypeError(f"tasks must be a comma-separated subset of {','.join(TASKS)}, got {text!r}")
    return list(dict.fromkeys(tasks))


def _levels(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_LEVELS:
        raise argparse.ArgumentTypeError(f"levels must be 1..{MAX_LEVELS}, got {value}")
    return value


def run_calibrate(data: str, weights: str, codec_name: str, out: Path, images: int | None = None, levels: int = 4,
                  points: int = 8, min_size: int = 512, max_size: int = 512, tasks: list[str] | None = None,
                  max_batch: int | None = None, progress: bool = True,
                  detections: int = ModelConfig.detections_per_img) -> Profile:
    """Calibrate and save a profile (the ``calibrate`` subcommand's work)."""
    from tqdm import tqdm

    tasks = tasks or ["detect"]
    archs = tuple(dict.fromkeys(TASK_ARCH[t] for t in tasks))
    config = ModelConfig(min_size=min_size, max_size=max_size, detections_per_img=detections)
    bundle = load_bundle(weights, config, archs=archs)
    codec = make_codec(codec_name)
    source = iter_images(data, images)
    bar = tqdm(source, total=images, desc="calibrate", unit="image", disable=not progress)
    profile = calibrate(bar, bundle, codec, tasks, levels=levels, points=points, data=data, max_batch=max_batch)
    profile.save(out)
    return profile


def _run_calibrate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        profile = run_calibrate(args.data, args.weights, args.codec, args.out, args.images, args.levels, args.points,
                                args.min_size, args.max_size, args.tasks, args.max_batch, not args.no_progress,
                                args.detections)
    except (ValueError, FpnlinkError) as exc:
        print(f"fpnlink mfiba calibrate: error: {exc}", file=sys.stderr)
        return 2
    print(summary(profile))
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def summary(profile: Profile) -> str:
    """The fits as text: Eq. 3 (Table 1 style), Eq. 7 (Table 2 style), the fast predictor."""
    cal = profile.calibration
    lines = [
        f"profile: codec {profile.codec.name} ({profile.codec.fingerprint}, phi {list(profile.codec.phi_range)}, "
        f"{profile.codec.phi_grid} grid, starve phi {profile.codec.starve_phi}), "
        f"backbone {profile.backbone.weights} ({profile.backbone.fingerprint}), "
        f"input {profile.backbone.min_size}/{profile.backbone.max_size}, tasks {','.join(profile.tasks)}",
        f"calibration: {cal.get('images', '?')} image(s) from {cal.get('data') or '?'}, levels {cal.get('levels')}, "
        "mean weights " + ", ".join(f"{SCALE_NAMES.get(k, k)} {v:.3f}"
                                    for k, v in cal.get("mean_weights", {}).items()),
        "",
        "task loss-rate model, d = w * alpha * R^-beta (Eq. 3; R in bits/position)   vs quadratic baseline",
        f"  {'scale':<7}{'alpha':>11}{'beta':>9}{'CC':>9}{'RMSE':>10}{'n':>6}   {'quad CC':>9}{'quad RMSE':>11}",
    ]
    fits = {"all": profile.loss_rate.global_fit, **profile.loss_rate.scales}
    for name, fit in fits.items():
        quad = profile.loss_rate.quadratic.get("global" if name == "all" else name)
        lines.append(f"  {SCALE_NAMES.get(name, name):<7}{fit.alpha:>11.4g}{fit.beta:>9.4f}{_fmt(fit.quality.cc):>9}"
                     f"{fit.quality.rmse:>10.4g}{fit.quality.n:>6}   "
                     f"{_fmt(quad.quality.cc if quad else None):>9}{_fmt(quad.quality.rmse if quad else None):>11}")
    lines += ["", "rate-phi model, R = a * phi + b (Eq. 7); a monotone spline where the line fits poorly",
              f"  {'scale':<7}{'kind':>7}{'a':>10}{'b':>10}{'line CC':>9}{'line RMSE':>11}{'CC':>9}{'RMSE':>10}"
              f"{'R(min)':>10}{'R(max)':>10}"]
    for name, model in profile.rate_phi.items():
        line, chosen = model.line_quality, model.quality
        lines.append(f"  {SCALE_NAMES.get(name, name):<7}{model.kind:>7}{model.a:>10.4g}{model.b:>10.4g}"
                     f"{_fmt(line.cc if line else None):>9}{_fmt(line.rmse if line else None):>11}"
                     f"{_fmt(chosen.cc if chosen else None):>9}{_fmt(chosen.rmse if chosen else None):>10}"
                     f"{model.r_min:>10.4g}{model.r_max:>10.4g}")
    if profile.fast_predictor is not None:
        train = profile.fast_predictor.train
        lines += ["", f"fast MFIP predictor: {train.get('samples')} sample(s), training MAE "
                      f"{_fmt(train.get('train_mae'))} (predicting the mean weights: {_fmt(train.get('prior_mae'))})"]
    timing = cal.get("timing_ms_median", {})
    if timing:
        lines.append("calibration medians (ms/image): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))
    return "\n".join(lines)


def write_plots(profile: Profile, out: Path) -> list[Path]:
    """Fig. 6 (loss/w against rate per scale, fitted curves) and Fig. 7 (R against phi) as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out.mkdir(parents=True, exist_ok=True)
    scales = list(profile.rate_phi)
    paths = []

    samples = profile.samples.get("loss_rate", [])
    fig, axes = plt.subplots(1, len(scales), figsize=(4 * len(scales), 3.6), squeeze=False)
    for ax, name in zip(axes[0], scales):
        rows = np.array([[w, d, r] for n, w, d, r in samples if n == name and w > 0], dtype=np.float64)
        fit = profile.loss_rate.for_scale(name)
        quad = profile.loss_rate.quadratic.get(name, profile.loss_rate.quadratic.get("global"))
        if len(rows):
            ax.scatter(rows[:, 2], rows[:, 1] / rows[:, 0], s=12, alpha=0.6, label="measured d / w")
            grid = np.geomspace(rows[:, 2].min(), rows[:, 2].max(), 100)
            ax.plot(grid, fit.predict(1.0, grid), "r-", label=f"Eq. 3: {fit.alpha:.3g} R^-{fit.beta:.3f}")
            if quad is not None:
                ax.plot(grid, quad.predict(1.0, grid), "g--", label="quadratic")
            ax.set_xscale("log")
            ax.legend(fontsize=7)
        own = "" if name in profile.loss_rate.scales else "global fit, "
        ax.set_title(f"{SCALE_NAMES.get(name, name)} ({own}CC {_fmt(fit.quality.cc, 3)}, "
                     f"{len(rows)} points with w > 0)", fontsize=9)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("rate R (bits / position)")
        ax.set_ylabel("task loss / w")
    fig.suptitle(f"task loss against rate ({profile.codec.name}, {', '.join(profile.tasks)})")
    fig.tight_layout()
    paths.append(out / "loss_rate.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    pairs = profile.samples.get("rate_phi", [])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    low, high = profile.codec.coded_phi_range
    grid = np.linspace(low, high, 200)
    for index, name in enumerate(scales):
        rows = np.array([[p, r] for n, p, r in pairs if n == name], dtype=np.float64)
        color = f"C{index}"
        model = profile.rate_phi[name]
        if len(rows):
            ax.scatter(rows[:, 0], rows[:, 1], s=10, alpha=0.5, color=color)
        ax.plot(grid, model.rate(grid), "-", color=color, label=f"{SCALE_NAMES.get(name, name)} {model.kind}")
        ax.plot(grid, model.a * grid + model.b, ":", color=color, linewidth=0.8)
    ax.set_xlabel("phi")
    ax.set_ylabel("R (bits / position)")
    ax.set_title(f"rate against phi ({profile.codec.name}; dotted: Eq. 7 line)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "rate_phi.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _run_report(args: argparse.Namespace) -> int:
    try:
        profile = load_profile(args.profile)
    except ValueError as exc:
        print(f"fpnlink mfiba report: error: {exc}", file=sys.stderr)
        return 2
    print(summary(profile))
    out = args.out or args.profile.parent
    for path in write_plots(profile, out):
        print(f"wrote {path}")
    if args.json:
        report: dict[str, Any] = {k: v for k, v in profile.to_dict().items() if k != "samples"}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fpnlink mfiba {calibrate,tune,report}``."""
    parser = subparsers.add_parser("mfiba", help="MFIBA bit allocation: calibrate a profile, report its fits")
    sub = parser.add_subparsers(dest="mfiba_command", required=True)

    p = sub.add_parser("calibrate", help="multi-pass coding + full MFIP over images -> profile JSON",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="image folder, COCO json, or synth:N[:SEED[:SIZE]]")
    p.add_argument("--weights", default="random:0", help="random:SEED, coco, synthetic or a checkpoint path")
    p.add_argument("--codec", default="quant", choices=available_codecs(), help="codec the profile is fitted for")
    p.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    p.add_argument("--images", type=int, help="use at most this many images")
    p.add_argument("--levels", type=_levels, default=4, help=f"MFIP quality levels m (1..{MAX_LEVELS})")
    p.add_argument("--points", type=int, default=8, help="rate points per scale for a continuous phi")
    p.add_argument("--min-size", type=int, default=512, help="network-input shorter side (as the edge runs)")
    p.add_argument("--max-size", type=int, default=512, help="network-input longer-side cap")
    p.add_argument("--tasks", type=_tasks, default=["detect"], help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--max-batch", type=int, help="most MFIP variants per heads call (memory cap)")
    p.add_argument("--detections", type=int, default=ModelConfig.detections_per_img,
                   help=f"results kept per image and task (default {ModelConfig.detections_per_img})")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_calibrate)

    mfiba_tune.register(sub)

    p = sub.add_parser("report", help="print a profile's fits and plot them (Figs. 6 and 7)")
    p.add_argument("profile", type=Path)
    p.add_argument("--out", type=Path, help="folder for the PNGs (default: beside the profile)")
    p.add_argument("--json", type=Path, help="also write the fits (without samples) to this JSON")
    p.set_defaults(func=_run_report)
