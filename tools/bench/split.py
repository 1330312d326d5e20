"""``fpnlink bench split``: split fidelity over real gRPC, frame sizes per codec, and per-stage timings.

The edge agent codes one synthetic scene; the cloud (in-process, loopback gRPC) decodes it and runs the
heads. With the lossless ``raw`` codec the results are compared with the unsplit torchvision models.
Quick mode: 512x512 input; full mode: 800x1216 (torchvision's default resize keeps it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from fpnlink.cloud.service import CloudService
from fpnlink.cloud.settings import CloudSettings
from fpnlink.edge import Client, EdgeAgent
from fpnlink.shared.codec import make_codec
from fpnlink.shared.imageio import to_tensor
from fpnlink.shared.model import TASK_ARCH, TASKS, ModelBundle, ModelConfig, load_bundle
from fpnlink.shared.wire import PB_TO_TASK, pb

from ..synth import render_scene
from .common import machine, median_ms, write_json

CODECS: tuple[str, ...] = ("raw", "raw16", "quant")
STAGES: tuple[str, ...] = ("backbone", "encode", "transport", "decode", "heads")
QUICK_SIZE = (512, 512)
FULL_SIZE = (800, 1216)


def scene(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A synthetic scene cropped to ``height`` x ``width``, as [3, H, W] float in [0, 1]."""
    image, _ = render_scene(np.random.default_rng(seed), max(height, width))
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    crop = image[top:top + height, left:left + width]
    return to_tensor(np.ascontiguousarray(crop))


def compare_with_monolith(bundle: ModelBundle, image: torch.Tensor, result: pb.Result,
                          tasks: tuple[str, ...] = TASKS) -> dict[str, dict]:
    """Per architecture of ``tasks``: largest box, score and keypoint differences, label and mask agreement."""
    by_task = {PB_TO_TASK[r.task]: r for r in result.results}
    report = {}
    for task in tasks:
        arch = TASK_ARCH[task]
        with torch.inference_mode():
            expected = bundle.models[arch]([image])[0]
        got = by_task[task].detections
        entry: dict = {"detections": len(got), "count_equal": len(got) == len(expected["boxes"])}
        if entry["count_equal"] and got:
            boxes = torch.tensor([list(d.box) for d in got])
            entry["max_abs_box_diff"] = (boxes - expected["boxes"]).abs().max().item()
            entry["max_abs_score_diff"] = (torch.tensor([d.score for d in got]) - expected["scores"]).abs().max().item()
            entry["labels_equal"] = [d.label for d in got] == expected["labels"].tolist()
            if task == "segment":
                binary = (expected["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
                decoded = [mask_utils.decode({"size": [d.mask.height, d.mask.width], "counts": d.mask.counts})
                           for d in got]
                entry["masks_equal"] = all(np.array_equal(m, b) for m, b in zip(decoded, binary))
            if task == "keypoints":
                points = torch.tensor([list(d.keypoints) for d in got]).reshape(len(got), -1, 3)
                entry["max_abs_keypoint_diff"] = (points - expected["keypoints"]).abs().max().item()
        else:
            entry["max_abs_box_diff"] = float("inf") if not entry["count_equal"] else 0.0
        report[arch] = entry
    return report


def run_split_bench(quick: bool, weights: str = "random:0", repeats: int = 3) -> dict:
    height, width = QUICK_SIZE if quick else FULL_SIZE
    config = ModelConfig(min_size=min(height, width), max_size=max(1333, height, width))
    bundle = load_bundle(weights, config)
    image = scene(height, width)
    settings = CloudSettings(host="127.0.0.1", grpc_port=0, http_port=0, weights=bundle.weights,
                             min_size=config.min_size, max_size=config.max_size, warmup=False, store=False)
    frame_bytes: dict[str, int] = {}
    stage_samples: dict[str, dict[str, list[float]]] = {c: {s: [] for s in STAGES} for c in CODECS}
    raw_feature_bytes = 0
    pool_transmitted = False
    fidelity: dict = {}
    frame_id = 0
    with CloudService(settings, bundle_loader=lambda _: bundle).run_in_background() as cloud, \
            Client(f"127.0.0.1:{cloud.grpc_port}") as client:
        client.wait_ready()
        for codec_name in CODECS:
            agent = EdgeAgent(bundle, make_codec(codec_name), list(TASKS), stream_id=f"bench-{codec_name}")
            for _ in range(repeats):
                frame_id += 1
                encoded = agent.encode(image, frame_id)
                start = time.perf_counter()
                result = client.analyze(encoded.frame)
                round_trip_ms = (time.perf_counter() - start) * 1000
                samples = stage_samples[codec_name]
                samples["backbone"].append(encoded.stage_ms["backbone"])
                samples["encode"].append(encoded.stage_ms["encode"])
                samples["transport"].append(max(round_trip_ms - result.stage_ms["total"], 0.0))
                samples["decode"].append(result.stage_ms["decode"])
                samples["heads"].append(result.stage_ms["heads"])
                if result.frame_bytes != encoded.frame_bytes:
                    raise RuntimeError(f"cloud counted {result.frame_bytes} bytes, edge sent {encoded.frame_bytes}")
            frame_bytes[codec_name] = encoded.frame_bytes
            raw_feature_bytes = encoded.raw_feature_bytes
            pool_transmitted |= any(s.name == "pool" for s in encoded.frame.scales)
            if codec_name == "raw":
                fidelity = compare_with_monolith(bundle, image, result)
    return {
        "bench": "split",
        "quick": quick,
        "input_size": [height, width],
        "weights": {"name": bundle.weights, "trained": bundle.trained,
                    "backbone_fingerprint": bundle.backbone_fingerprints["faster"]},
        "max_abs_box_diff": {arch: entry["max_abs_box_diff"] for arch, entry in fidelity.items()},
        "fidelity_raw_codec": fidelity,
        "pool_transmitted": pool_transmitted,
        "frame_bytes": frame_bytes,
        "raw_feature_bytes": raw_feature_bytes,
        "compression_ratio": {c: round(raw_feature_bytes / b, 2) for c, b in frame_bytes.items()},
        "stage_ms": {c: {s: median_ms(v) for s, v in samples.items()} for c, samples in stage_samples.items()},
        "repeats": repeats,
        "tasks": list(TASKS),
        "machine": machine(),
    }


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_split_bench(args.quick, args.weights, args.repeats)
    write_json(args.json, report)
    print(f"max_abs_box_diff {report['max_abs_box_diff']}  pool_transmitted {report['pool_transmitted']}")
    print(f"frame_bytes {report['frame_bytes']}  raw_feature_bytes {report['raw_feature_bytes']}")
    for codec_name, stages in report["stage_ms"].items():
        print(f"stage_ms[{codec_name}] {stages}")
    print(f"wrote {args.json}")
    return 0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("split", help="split fidelity, frame bytes per codec, stage timings",
                                         description=__doc__)
    parser.add_argument("--quick", action="store_true", help="512x512 instead of 800x1216")
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--weights", default="random:0", help="random:SEED, synthetic, coco or a checkpoint path")
    parser.add_argument("--repeats", type=int, default=3, help="frames per codec; medians are reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.set_defaults(func=_run)
