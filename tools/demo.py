"""``fpnlink demo``: the cloud in-process on loopback, the edge streaming generated scenes to it.

Writes ``DIR/inputs/*.png`` (the scenes), ``DIR/annotated/*.png`` (results drawn), ``DIR/results.jsonl``
(one line per frame) and ``DIR/summary.json``, and prints a per-frame table. Each frame's feature bytes
stand next to the bytes of a quality-75 JPEG of the same image, the upload fpnlink replaces.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fpnlink.cloud.service import CloudService
from fpnlink.cloud.settings import CloudSettings
from fpnlink.edge import Client, EdgeAgent, EncodedFrame, ImageSource, SourceFrame
from fpnlink.edge.operating_point import DEFAULT_BUDGET, DEFAULT_MFIP, budgeted_coder, choose_operating_point
from fpnlink.edge.results import ResultLog
from fpnlink.edge.spool import Spool
from fpnlink.edge.stream import StreamLoop
from fpnlink.shared.codec import DEFAULT_LEARNED_CODEC, available_codecs, make_codec
from fpnlink.shared.errors import WeightsError
from fpnlink.shared.imageio import decode_image, to_tensor
from fpnlink.shared.model import TASKS, ModelBundle, ModelConfig, load_bundle

from .draw import annotate
from .image_coding import REFERENCE_JPEG_QUALITY, encode_image
from .synth import render_scene

UNTRAINED_NOTICE = (
    "\n" + "!" * 96 + "\n"
    "!!  UNTRAINED WEIGHTS ({weights}): detections below are noise from a randomly initialised model.\n"
    "!!  Use --weights synthetic (fpnlink's reference weights) or --weights coco on a connected machine.\n"
    + "!" * 96 + "\n"
)


def resolve_weights(requested: str, config: ModelConfig) -> ModelBundle:
    """``auto`` means ``synthetic`` when its parts are present, else ``random:0``."""
    if requested != "auto":
        return load_bundle(requested, config)
    try:
        return load_bundle("synthetic", config)
    except WeightsError as exc:
        print(f"note: synthetic weights unavailable ({exc}); falling back to random:0")
        return load_bundle("random:0", config)


def generate_scenes(out_dir: Path, count: int, size: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Render ``count`` synthetic scenes, save them as PNG, return ``(name, [3, H, W] float)`` pairs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scenes = []
    for index in range(count):
        image, _ = render_scene(np.random.default_rng([seed, index]), size)
        name = f"scene{index:03d}"
        Image.fromarray(image).save(out_dir / f"{name}.png")
        scenes.append((name, to_tensor(image)))
    return scenes


def jpeg_bytes(image: torch.Tensor, quality: int = REFERENCE_JPEG_QUALITY) -> int:
    """Size of a ``[3, H, W]`` float image in [0, 1] as a JPEG file."""
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return len(encode_image(array, "JPEG", quality))


def _row(line: dict) -> dict:
    """The table's and the summary's view of one results line."""
    result, stages = line["result"], line["stage_ms"]
    cloud = result["stage_ms"]
    return {
        "image": line["image"],
        "frame_id": line["frame_id"],
        "frame_bytes": result["frame_bytes"],
        "raw_feature_bytes": line["raw_feature_bytes"],
        "ratio": line["ratio"],
        "jpeg75_bytes": line["jpeg75_bytes"],
        "vs_jpeg75": line["vs_jpeg75"],
        "stage_ms": {k: round(v, 1) for k, v in {
            "backbone": stages["backbone"], "encode": stages["encode"], "transport": stages["transport"] or 0.0,
            "decode": cloud.get("decode", 0.0), "heads": cloud.get("heads", 0.0)}.items()},
        "detections": {task: len(result.get(task, [])) for task in TASKS if task in result},
        "error": result.get("error"),
    }


def _print_table(rows: list[dict]) -> None:
    header = (f"{'image':<10} {'bytes':>10} {'jpeg q75':>9} {'/jpeg':>6} {'raw':>11} {'ratio':>6} {'backbone':>9} "
              f"{'encode':>7} {'transp':>7} {'decode':>7} {'heads':>8}  detections")
    print(header)
    print("-" * len(header))
    for row in rows:
        ms = row["stage_ms"]
        found = " ".join(f"{task}={n}" for task, n in row["detections"].items()) or f"ERROR {row['error']}"
        print(f"{row['image']:<10} {row['frame_bytes']:>10,} {row['jpeg75_bytes']:>9,} {row['vs_jpeg75']:>6.2f} "
              f"{row['raw_feature_bytes']:>11,} {row['ratio']:>6.1f} "
              f"{ms['backbone']:>9.0f} {ms['encode']:>7.0f} {ms['transport']:>7.0f} {ms['decode']:>7.0f} "
              f"{ms['heads']:>8.0f}  {found}")


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ModelConfig(min_size=args.size, max_size=args.size, detections_per_img=args.detections)
    bundle = resolve_weights(args.weights, config)
    if not bundle.trained:
        print(UNTRAINED_NOTICE.format(weights=bundle.weights))
    codec = make_codec(args.codec)
    generate_scenes(out / "inputs", args.images, args.size, args.seed)

    settings = CloudSettings(host="127.0.0.1", grpc_port=0, http_port=0, weights=bundle.weights,
                             min_size=config.min_size, max_size=config.max_size,
                             detections_per_img=config.detections_per_img, warmup=False, store=False)
    started = time.perf_counter()
    with CloudService(settings, bundle_loader=lambda _: bundle).run_in_background() as cloud:
        print(f"cloud up on loopback: gRPC :{cloud.grpc_port}, REST :{cloud.http_port} (weights {bundle.weights})")
        agent = EdgeAgent(bundle, codec, tasks, stream_id="demo")
        try:
            point = choose_operating_point(codec, agent.model_fingerprint, phi=args.phi, budget=args.budget)
            rate_control = None if point.budget is None else \
                budgeted_coder(point, codec, args.mfip, agent.tasks, bundle)
        except ValueError as exc:
            print(f"fpnlink demo: error: {exc}", file=sys.stderr)
            return 2
        print(f"operating point: codec {codec.name} ({codec.fingerprint}), {point.describe()}"
              f"{'' if rate_control is None else f' (MFIP {args.mfip})'}, {config.min_size} px input")
        rows: list[dict] = []

        def on_encoded(taken: SourceFrame, encoded: EncodedFrame) -> dict:
            jpeg = jpeg_bytes(taken.image)
            return {"jpeg75_bytes": jpeg, "vs_jpeg75": encoded.frame_bytes / max(jpeg, 1),
                    "ratio": encoded.raw_feature_bytes / max(encoded.frame_bytes, 1)}

        def on_row(row: dict) -> None:
            rows.append(_row(row))
            image = decode_image(out / "inputs" / row["image"])
            pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            (out / "annotated").mkdir(exist_ok=True)
            annotate(pil, row["result"], min_score=args.min_score).save(out / "annotated" / row["image"])

        with (Client(f"127.0.0.1:{cloud.grpc_port}") as client, tempfile.TemporaryDirectory() as spool_dir,
              Spool(Path(spool_dir) / "spool.sqlite") as spool):
            client.wait_ready()
            results = ResultLog(out / "results.jsonl", resume=False)
            try:
                StreamLoop(agent, ImageSource(out / "inputs"), spool, client, results,
                           phi=None if point.phi is None else dict.fromkeys("0123", point.phi),
                           rate_control=rate_control, on_encoded=on_encoded, on_row=on_row,
                           progress=False).run()
            finally:
                results.close()
    rows.sort(key=lambda row: row["frame_id"])
    _print_table(rows)
    summary = {
        "weights": bundle.weights,
        "trained": bundle.trained,
        "backbone_fingerprint": agent.model_fingerprint,
        "codec": codec.name,
        "codec_fingerprint": codec.fingerprint,
        "phi": point.phi,
        "budget": None if point.budget is None else point.budget.text,
        "mfip": None if rate_control is None else args.mfip,
        "tasks": tasks,
        "image_size": args.size,
        "frames": len(rows),
        "errors": sum(1 for r in rows if r["error"]),
        "total_frame_bytes": sum(r["frame_bytes"] for r in rows),
        "total_raw_feature_bytes": sum(r["raw_feature_bytes"] for r in rows),
        "total_jpeg75_bytes": sum(r["jpeg75_bytes"] for r in rows),
        "wall_s": round(time.perf_counter() - started, 2),
        "per_frame": [{k: v for k, v in r.items() if k != "result"} for r in rows],
    }
    summary["bytes_over_jpeg75"] = round(summary["total_frame_bytes"] / max(summary["total_jpeg75_bytes"], 1), 3)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"features: {summary['total_frame_bytes']:,} bytes over {len(rows)} frames; quality-75 JPEG of the same "
          f"images: {summary['total_jpeg75_bytes']:,} bytes; features / JPEG = {summary['bytes_over_jpeg75']:.3f}")
    if not bundle.trained:
        print(UNTRAINED_NOTICE.format(weights=bundle.weights))
    print(f"wrote {out / 'summary.json'}, {out / 'results.jsonl'} and {len(rows)} annotated images in {out / 'annotated'}")
    return 1 if summary["errors"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="cloud in-process + edge over generated scenes; writes a report",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--weights", default="auto",
                        help="auto (synthetic if present, else random:0), synthetic, coco, random:SEED or a checkpoint")
    parser.add_argument("--codec", default=DEFAULT_LEARNED_CODEC, choices=available_codecs(),
                        help=f"feature codec (default {DEFAULT_LEARNED_CODEC}, with its shipped weights)")
    parser.add_argument("--phi", type=float, default=None, help="fixed rate parameter for every scale instead of a budget")
    parser.add_argument("--budget", default=None,
                        help=f"MFIBA frame budget (default {DEFAULT_BUDGET} where a profile ships for the codec and "
                             "weights, else the codec's default phi)")
    parser.add_argument("--mfip", default=DEFAULT_MFIP, help="scale importance under a budget: fast, full or uniform")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: detect,segment,keypoints")
    parser.add_argument("--images", type=int, default=4, help="number of generated scenes")
    parser.add_argument("--size", type=int, default=256,
                        help="scene side and network-input size in pixels (the synthetic weights are trained at 256)")
    parser.add_argument("--detections", type=int, default=20, help="detections kept per image and task")
    parser.add_argument("--min-score", type=float, default=0.3, help="score threshold for drawing")
    parser.add_argument("--seed", type=int, default=0, help="scene generator seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.set_defaults(func=run_demo)
