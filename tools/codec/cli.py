"""The ``fpnlink codec`` subcommands.

::

    fpnlink codec extract --data SRC --weights W --out SHARDS [--min-size --max-size --limit --crop]
        SRC: an image folder, a COCO json (images next to it or under ../images/<split>/), or
        synth:N[:SEED[:SIZE]] (scenes from tools.synth.render_scene, random textures without it).
        Writes P2..P5 ('0'..'3') as fp16 in shard-NNNNN.pt files plus manifest.json.
    fpnlink codec train --shards SHARDS --out CKPT [--steps --batch --lr --device auto --resume ...]
        L = R + lambda(phi) * D with phi ~ U[0, N-1] per item (the loss: ``tools.codec.train``).
    fpnlink codec train-xscale --shards SHARDS --out CKPT [--warm-start LEARNED | --fine-tune CODEC
        [--decoder-only]] [--steps --crop --resume ...]
        the cross-scale codec on aligned crops of all four scales, task-aware distortion
        (the loss: ``tools.codec.train_xscale``).
    fpnlink codec export --ckpt CKPT --out FILE [--half]
        the checkpoint without its optimiser state (what ships); --half stores the transforms in fp16.
    fpnlink codec eval --shards HELDOUT --ckpt CKPT --out DIR
        rd.json, rd.md and rd.png: bits per input pixel against feature PSNR for each scale,
        learned (real bytes, container header included) against ``quant`` at 1..8 bits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from ...shared.errors import FpnlinkError
from ...shared.model import TRANSMITTED_SCALES
from .evaluate import evaluate_codec
from .export import export_checkpoint
from .shards import FeatureShards, extract_features
from .train import DEFAULT_LAMBDAS, TrainSettings, train_codec
from .train_xscale import XScaleSettings, train_xscale


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fpnlink codec {extract,train,train-xscale,export,eval}``."""
    parser = subparsers.add_parser("codec", help="learned feature codec: extract features, train, evaluate")
    sub = parser.add_subparsers(dest="codec_command", required=True)

    p = sub.add_parser("extract", help="run the backbone over images and store P2..P5 as fp16 shards")
    p.add_argument("--data", required=True, help="image folder, COCO json, or synth:N[:SEED[:SIZE]]")
    p.add_argument("--weights", default="random:0", help="backbone weights (coco, random:SEED, synthetic, path)")
    p.add_argument("--out", type=Path, required=True, help="shard folder to write")
    p.add_argument("--min-size", type=int, default=512, help="network-input shorter side")
    p.add_argument("--max-size", type=int, default=512, help="network-input longer-side cap")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--crop", type=int, help="store one random crop of this side per scale (training shards)")
    p.add_argument("--seed", type=int, default=0, help="crop positions")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=_run_extract)

    p = sub.add_parser("train", help="train the variable-rate model")
    p.add_argument("--shards", type=Path, required=True, help="training shards (`fpnlink codec extract --crop`)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (and resume from)")
    defaults = TrainSettings()
    int_options = {
        "steps": "total optimiser steps; a resumed run continues up to this count",
        "batch": "crops per step", "crop": "crop side in feature-map positions",
        "save_every": "steps between checkpoints", "seed": "sampling seed",
        "latent": "latent channels M", "hyper": "hyper-latent channels", "hidden": "hidden channels of the transforms",
    }
    for name, text in int_options.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name),
                       help=f"{text} (default {getattr(defaults, name)})")
    p.add_argument("--lr", type=float, default=defaults.lr,
                   help=f"Adam learning rate, divided by 10 for the last 10%% (default {defaults.lr:g})")
    p.add_argument("--monotone", type=float, default=defaults.monotone,
                   help="weight of the penalty on rate rising as phi falls (a second pass per step; 0: off)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this many minutes")
    p.add_argument("--lambdas", help="distortion weight per gain level, comma-separated (count sets N; default "
                   f"{','.join(f'{v:g}' for v in defaults.lambdas)}); with --resume, new weights for the stored levels")
    p.add_argument("--scales", default=",".join(defaults.scales), help="scales to train on, e.g. 0 for P2 only")
    p.add_argument("--limit", type=int, help="use only the first LIMIT items")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--shared", action="store_true", help="one set of transforms for all scales")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out when it exists (also fine-tunes on other shards, e.g. a retrained backbone)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)

    p = sub.add_parser("train-xscale", help="train the cross-scale codec (xscale)")
    p.add_argument("--shards", type=Path, required=True, help="whole-map shards (`fpnlink codec extract`, no --crop)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (and resume from); log beside it")
    xdefaults = XScaleSettings()
    for name, text in {
        "steps": "total optimiser steps; a resumed run continues up to this count", "batch": "items per step",
        "crop": "P2 crop side in positions, a multiple of 8", "save_every": "steps between checkpoints",
        "seed": "sampling seed", "latent": "latent channels M", "hyper": "hyper-latent channels",
        "hidden": "hidden channels of the hyperprior transforms", "decoder": "channels of the cross-scale decoder",
        "stop_at": "stop (and save) at this step, keeping the schedule of --steps (ablations at equal steps); 0: "
        "run to --steps",
    }.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(xdefaults, name),
                       help=f"{text} (default {getattr(xdefaults, name)})")
    for name, text in {
        "lr": "Adam learning rate, divided by 10 for the last 10%%", "task_weight": "weight of the head-sensitivity "
        "term in the distortion (0: plain feature MSE)", "starve": "probability of the starve level per scale",
        "max_minutes": "stop (and save) after this many minutes; 0: no limit",
    }.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(xdefaults, name),
                       help=f"{text} (default {getattr(xdefaults, name):g})")
    p.add_argument("--lambdas", help="distortion weight per gain level, comma-separated (count sets N; default "
                   f"{','.join(f'{v:g}' for v in xdefaults.lambdas)}); with --resume, new weights for the stored levels")
    p.add_argument("--no-context", action="store_true", help="cut the cross-scale decoder path (ablation)")
    p.add_argument("--no-hyper-gains", action="store_true", help="no per-level scaling of the hyper-latent (ablation)")
    p.add_argument("--warm-start", type=Path, help="a learned-codec checkpoint to start the analysis and hyperprior from")
    p.add_argument("--pca-init", action="store_true", help="start the transforms as a PCA coder (latent/4 components "
                   "per position, fitted on the shards)")
    p.add_argument("--fine-tune", type=Path, metavar="CODEC", help="start from every tensor of an exported xscale codec "
                   "(e.g. shared/codec/assets/xscale-synthetic.pt); needs --lambdas")
    p.add_argument("--decoder-only", action="store_true", help="with --fine-tune: train the synthesis side alone, so "
                   "the bitstreams (and the rate models of a profile) stay as they are")
    p.add_argument("--resume", action="store_true", help="continue from --out when it exists")
    p.add_argument("--limit", type=int, help="use only the first LIMIT items")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train_xscale)

    p = sub.add_parser("export", help="write a checkpoint without its training state (what LearnedCodec loads)")
    p.add_argument("--ckpt", type=Path, required=True, help="training checkpoint (`fpnlink codec train --out`)")
    p.add_argument("--out", type=Path, required=True, help="codec file to write")
    p.add_argument("--half", action="store_true", help="store the analysis/synthesis transforms in float16")
    p.set_defaults(func=_run_export)

    p = sub.add_parser("eval", help="RD table and plot against the quant codec on held-out shards")
    p.add_argument("--shards", type=Path, required=True, help="held-out shards (not the training ones)")
    p.add_argument("--ckpt", type=Path, required=True, help="codec checkpoint to evaluate")
    p.add_argument("--codec", default="learned", choices=("learned", "xscale"), help="the checkpoint's codec")
    p.add_argument("--out", type=Path, required=True, help="folder for rd.json, rd.md, rd.png")
    p.add_argument("--phis", help="comma-separated phi values (default: every half step of the range)")
    p.add_argument("--scales", default=",".join(TRANSMITTED_SCALES), help="comma-separated scales to evaluate")
    p.add_argument("--limit", type=int, help="use only the first LIMIT items")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=_run_eval)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _scales(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _lambdas(text: str | None) -> tuple[float, ...] | None:
    """``--lambdas``: None when not given; at least two positive values otherwise."""
    if text is None:
        return None
    values = tuple(_floats(text))
    if len(values) < 2 or min(values) <= 0:
        raise ValueError(f"--lambdas needs at least two positive values, got {text!r}")
    return values


def _fail(command: str, exc: Exception) -> int:
    print(f"fpnlink codec {command}: error: {exc}", file=sys.stderr)
    return 2


def _run_extract(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        manifest = extract_features(args.data, args.weights, args.out, args.min_size, args.max_size, args.limit,
                                    args.crop, args.seed)
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("extract", exc)
    print(json.dumps({k: manifest[k] for k in ("count", "backbone_fingerprint", "weights")}, indent=2))
    return 0


def _run_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        lambdas = _lambdas(args.lambdas)
        settings = TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)
                                    if f.name not in ("lambdas", "scales")},
                                 lambdas=lambdas or DEFAULT_LAMBDAS, scales=_scales(args.scales))
        started = time.perf_counter()
        logged = train_codec(FeatureShards(args.shards, args.limit), args.out, settings, args.device, args.resume,
                             progress=not args.no_progress, retarget=lambdas if args.resume else None)
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("train", exc)
    print(json.dumps({**logged, "checkpoint": str(args.out), "seconds": round(time.perf_counter() - started, 1)}))
    return 0


def _run_train_xscale(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        lambdas = _lambdas(args.lambdas)
        if args.fine_tune and not lambdas:
            raise ValueError("--fine-tune needs --lambdas, the distortion weights of the codec's gain levels (the "
                             "shipped codec's are in its recipe, fpnlink.shared.codec.xscale.SYNTHETIC_CHECKPOINT)")
        settings = XScaleSettings(**{f.name: getattr(args, f.name) for f in fields(XScaleSettings)
                                     if f.name not in ("lambdas", "context", "hyper_gains")},
                                  lambdas=lambdas or XScaleSettings.lambdas, context=not args.no_context,
                                  hyper_gains=not args.no_hyper_gains)
        started = time.perf_counter()
        logged = train_xscale(FeatureShards(args.shards, args.limit), args.out, settings, args.resume,
                              args.warm_start, progress=not args.no_progress, pca_init=args.pca_init,
                              retarget=lambdas if args.resume else None, fine_tune=args.fine_tune)
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("train-xscale", exc)
    print(json.dumps({**logged, "checkpoint": str(args.out), "seconds": round(time.perf_counter() - started, 1)}))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    try:
        summary = export_checkpoint(args.ckpt, args.out, args.half)
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("export", exc)
    print(json.dumps(summary, indent=2))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = evaluate_codec(FeatureShards(args.shards, args.limit), args.ckpt, args.out,
                                _floats(args.phis) if args.phis else None, scales=_scales(args.scales),
                                codec_name=args.codec)
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("eval", exc)
    print(json.dumps({"bd_rate_vs_quant_percent": report["bd_rate_vs_quant_percent"],
                      "rate_monotonic": report["rate_monotonic"], "out": str(args.out)}, indent=2))
    return 0
