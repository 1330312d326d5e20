"""``fpnlink bench codec [--quick] [--codec xscale|learned] [--ckpt CKPT] --json PATH``: a learned codec
against quant and the backbone.

What it measures, in one run on one machine::

    backbone_ms   edge half (transform + ResNet50-FPN) on one image, 800x1216 (512x512 with --quick)
    encode_ms     LearnedCodec.encode of that image's P2..P5 at the default phi
    decode_ms     LearnedCodec.decode of those records
    deterministic encode with 1 thread here, decode with 2 threads in a spawned process: every
                  latent symbol and CDF index identical, reconstructions equal to float32 rounding
                  (details, exact-equality flag included, under "determinism")
    rate_range    per scale, bytes at the highest phi over bytes at the lowest (the span MFIBA can allocate)
    rate_monotonic the bytes of every scale never rise as phi falls (9 phi over the whole range,
                  same frame; per scale in rate_monotonic_by_scale, and on the held-out set in
                  rate_monotonic_heldout)
    bd_rate_vs_quant_percent  BD-rate (PCHIP) of feature PSNR against bits per input pixel, learned
                  against quant at 1..8 bits, on held-out synthetic scenes (total rate against the
                  mean PSNR of the four scales; per scale in bd_rate_per_scale)

Timings are medians of 3 after one warm-up. Features come from the backbone the checkpoint was trained
on (its provenance: ``weights``, and ``min_size`` for the held-out scenes' side; ``random:0`` and
512 px for checkpoints that do not say), unless ``--weights`` / ``--rd-size`` name others.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...shared.codec import DEFAULT_LEARNED_CODEC, make_codec
from ...shared.errors import FpnlinkError
from ...shared.imageio import to_tensor
from ...shared.model import TRANSMITTED_SCALES, ModelConfig, load_bundle
from ..codec.crosscheck import cross_process_check
from ..codec.evaluate import evaluate_codec
from ..codec.images import render_image
from ..codec.shards import FeatureShards
from .common import machine, median_ms, timed, write_json

HELDOUT_SEED = 90_001
"""Seed of the held-out scenes (training scenes use small seeds)."""
DEFAULT_WEIGHTS = "random:0"
DEFAULT_RD_SIZE = 512


def _scene(seed: int, height: int, width: int) -> torch.Tensor:
    image = render_image(np.random.default_rng([seed, 0]), max(height, width))[:height, :width]
    return to_tensor(np.ascontiguousarray(image))


def _heldout(weights: str, size: int, count: int) -> FeatureShards:
    """Features of ``count`` held-out ``size`` px scenes, in memory."""
    edge = load_bundle(weights, ModelConfig(min_size=size, max_size=size), archs=("faster",)).edge_half(["detect"])
    features: dict[str, list[torch.Tensor]] = {name: [] for name in TRANSMITTED_SCALES}
    items = []
    with torch.inference_mode():
        for i in range(count):
            maps, _, original_sizes = edge([_scene(HELDOUT_SEED + i, size, size)])
            for name in TRANSMITTED_SCALES:
                features[name].append(maps[name][0].clone())
            items.append({"source": f"heldout:{i}", "original_size": list(original_sizes[0])})
    return FeatureShards.from_memory(features, items, {"weights": weights})


def run_codec_bench(quick: bool, ckpt: Path | None, json_path: Path, weights: str | None = None,
                    rd_size: int | None = None, codec_name: str = DEFAULT_LEARNED_CODEC) -> dict[str, Any]:
    """Run the benchmark, write ``json_path`` and return the report (see the module docstring)."""
    codec = make_codec(codec_name, ckpt)
    checkpoint = codec.checkpoint
    weights = weights or codec.model.meta.get("weights") or DEFAULT_WEIGHTS
    rd_size = rd_size or codec.model.meta.get("min_size") or DEFAULT_RD_SIZE
    height, width = (512, 512) if quick else (800, 1216)
    config = ModelConfig(min_size=min(height, width), max_size=max(height, width, 1333 if not quick else 512))
    edge = load_bundle(weights, config, archs=("faster",)).edge_half(["detect"])
    image = _scene(HELDOUT_SEED - 1, height, width)
    phi = codec.default_phi

    with torch.inference_mode():
        backbone = [timed(lambda: edge([image]))[1] for _ in range(4)][1:]
        features = edge([image])[0]
    encode = [timed(lambda: codec.encode(features, dict.fromkeys(features, phi))) for _ in range(4)][1:]
    records = encode[0][0]
    decode = [timed(lambda: codec.decode(records))[1] for _ in range(4)][1:]

    low, high = codec.phi_range
    phis = [float(v) for v in np.linspace(high, low, 9)]
    per_phi = [{r.name: len(r.payload) for r in codec.encode(features, dict.fromkeys(features, p))} for p in phis]
    sizes = [sum(sizes.values()) for sizes in per_phi]
    monotonic_by_scale = {name: all(a[name] >= b[name] for a, b in zip(per_phi, per_phi[1:])) for name in features}

    determinism = cross_process_check(checkpoint, features, phi, codec_name=codec_name)
    rd = evaluate_codec(_heldout(weights, rd_size, 2 if quick else 6), checkpoint, codec_name=codec_name)
    report = {
        "bench": "codec", "codec": codec_name, "quick": quick, "machine": machine(), "checkpoint": str(checkpoint), "weights": weights,
        "fingerprint": codec.fingerprint, "image_size": [height, width], "phi": phi,
        "bd_rate_vs_quant_percent": rd["bd_rate_vs_quant_percent"].get("all"),
        "bd_rate_per_scale": {k: v for k, v in rd["bd_rate_vs_quant_percent"].items() if k != "all"},
        "deterministic": determinism["deterministic"], "determinism": determinism,
        "encode_ms": median_ms([t for _, t in encode]), "decode_ms": median_ms(decode),
        "backbone_ms": median_ms(backbone),
        "bytes_at_phi": sum(len(r.payload) for r in records),
        "bpp_at_phi": sum(len(r.payload) for r in records) * 8 / (height * width),
        "rate_range": {name: round(per_phi[0][name] / per_phi[-1][name], 2) for name in features},
        "rate_monotonic": all(monotonic_by_scale.values()), "rate_monotonic_by_scale": monotonic_by_scale,
        "rate_monotonic_heldout": rd["rate_monotonic"],
        "rate_by_phi": [{"phi": p, "bytes": s, "scales": d} for p, s, d in zip(phis, sizes, per_phi)],
        "rd": {"learned": rd["learned"], "quant": rd["quant"], "items": rd["items"], "size": rd_size},
    }
    report["codec_over_backbone"] = round((report["encode_ms"] + report["decode_ms"]) / report["backbone_ms"], 3)
    write_json(Path(json_path), report)
    return report


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``fpnlink bench codec``."""
    p = bench_subparsers.add_parser("codec", help="learned codec: BD-rate vs quant, determinism, speed vs backbone")
    p.add_argument("--quick", action="store_true", help="512x512 timing, 2 held-out images")
    p.add_argument("--codec", default=DEFAULT_LEARNED_CODEC, choices=("xscale", "learned"), help="codec benchmarked "
                   f"(default {DEFAULT_LEARNED_CODEC})")
    p.add_argument("--ckpt", type=Path, help="its checkpoint (default: the codec's shipped one)")
    p.add_argument("--json", type=Path, required=True, help="report to write")
    p.add_argument("--weights", help="backbone (default: the one the checkpoint was trained on, else random:0)")
    p.add_argument("--rd-size", type=int, help="side of the held-out scenes (default: the checkpoint's training size)")
    p.add_argument("--threads", type=int, help="torch CPU threads for the timings")
    p.set_defaults(func=_run)


register_bench = register


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run_codec_bench(args.quick, args.ckpt, args.json, args.weights, args.rd_size, args.codec)
    except (ValueError, OSError, FpnlinkError) as exc:
        print(f"fpnlink bench codec: error: {exc}", file=sys.stderr)
        return 2
    keys = ("bd_rate_vs_quant_percent", "deterministic", "encode_ms", "decode_ms", "backbone_ms", "rate_monotonic")
    print({k: report[k] for k in keys})
    return 0
