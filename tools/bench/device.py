"""``fpnlink bench device``: the engine on one device, batch 1 against batches, fp32 against autocast.

A one-shot script for a GPU machine (``--device cuda``; it runs on CPU too, at a small ``--size``)::

    pre-encode --frames scenes (edge half + codec) ──> CloudEngine(device).prepare
    frames/s: run_batch one frame at a time, then --batch frames at a time         (fp32)
    frames/s: run_batch --batch frames at a time under torch.autocast(fp16 | bf16)
    accuracy effect of autocast against fp32, per task: detections matched (same label, IoU >= 0.5) over fp32's,
        and the largest score difference of the matched ones

The engine decodes and runs the heads on ``--device``; timings synchronize the device and are medians over
``--repeats`` passes after one warm-up pass.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from torchvision.ops import box_iou

from fpnlink.cloud import CloudEngine
from fpnlink.shared.codec import DEFAULT_LEARNED_CODEC
from fpnlink.shared.model import TASKS, ModelConfig, load_bundle
from fpnlink.shared.wire import pb

from .common import comma_choices, machine, median_ms, write_json
from .load import encode_frames

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
MATCH_IOU = 0.5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(engine: CloudEngine, prepared: list, batch: int, repeats: int, dtype: torch.dtype | None,
                 ) -> tuple[float, list[pb.Result]]:
    """Frames/s of ``run_batch`` over ``prepared`` in batches of ``batch`` (median pass), and the last results."""
    autocast = (torch.autocast(engine.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
    passes, results = [], []
    for attempt in range(repeats + 1):  # the first pass warms up
        _sync(engine.device)
        start = time.perf_counter()
        results = []
        with autocast:
            for i in range(0, len(prepared), batch):
                results += engine.run_batch(prepared[i:i + batch])
        _sync(engine.device)
        if attempt:
            passes.append(1e3 * (time.perf_counter() - start))
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} frames failed, first: {failed[0]!r}")
    return round(1e3 * len(prepared) / median_ms(passes), 3), results


def agreement(reference: list[pb.Result], other: list[pb.Result]) -> dict[str, dict[str, float]]:
    """Per task: fp32 detections that ``other`` matches (same label, IoU >= 0.5) and the largest score gap."""
    report: dict[str, dict[str, float]] = {}
    for ref_result, got_result in zip(reference, other):
        for ref_task, got_task in zip(ref_result.results, got_result.results):
            entry = report.setdefault(pb.Task.Name(ref_task.task), {"fp32": 0, "matched": 0, "max_score_diff": 0.0})
            entry["fp32"] += len(ref_task.detections)
            if not ref_task.detections or not got_task.detections:
                continue
            iou = box_iou(torch.tensor([list(d.box) for d in ref_task.detections]),
                          torch.tensor([list(d.box) for d in got_task.detections]))
            for i, ref in enumerate(ref_task.detections):
                for j in torch.argsort(iou[i], descending=True).tolist():
                    got = got_task.detections[j]
                    if iou[i, j] < MATCH_IOU:
                        break
                    if got.label == ref.label:
                        entry["matched"] += 1
                        entry["max_score_diff"] = max(entry["max_score_diff"], abs(got.score - ref.score))
                        break
    for entry in report.values():
        entry["matched_fraction"] = round(entry["matched"] / entry["fp32"], 4) if entry["fp32"] else 1.0
        entry["max_score_diff"] = round(entry["max_score_diff"], 5)
    return report


def run_device_bench(args: argparse.Namespace) -> dict:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    config = ModelConfig(min_size=args.size, max_size=args.size, detections_per_img=args.detections_per_img)
    bundle = load_bundle(args.weights, config)
    frames, operating_point = encode_frames(bundle, args.size, args.frames, tasks, args.codec)
    engine = CloudEngine(bundle, device=args.device, cache_size=0)
    prepared = [engine.prepare(f, f.ByteSize()) for f in frames]
    fps_one, reference = time_batches(engine, prepared, 1, args.repeats, None)
    fps_batched, _ = time_batches(engine, prepared, args.batch, args.repeats, None)
    report: dict = {
        "bench": "device",
        "config": {"device": str(engine.device), "weights": args.weights, "trained": bundle.trained,
                   "input_size": args.size, "detections_per_img": args.detections_per_img, "tasks": tasks,
                   "codec": args.codec, "operating_point": operating_point, "frames": len(frames),
                   "batch": args.batch, "repeats": args.repeats,
                   "shared_heads": engine.shared_groups},
        "fp32": {"frames_per_s_batch1": fps_one, "frames_per_s_batched": fps_batched,
                 "batched_vs_batch1": round(fps_batched / fps_one, 3)},
        "autocast": {},
        "machine": machine(),
    }
    for name in args.autocast:
        try:
            fps, results = time_batches(engine, prepared, args.batch, args.repeats, AUTOCAST_DTYPES[name])
        except (RuntimeError, TypeError) as exc:  # an op without a kernel for this dtype on this device
            report["autocast"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        report["autocast"][name] = {"frames_per_s_batched": fps, "vs_fp32_batched": round(fps / fps_batched, 3),
                                    "agreement_with_fp32": agreement(reference, results)}
    return report


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_device_bench(args)
    write_json(args.json, report)
    print(f"fp32: {report['fp32']}")
    for name, entry in report["autocast"].items():
        print(f"{name}: {entry}")
    print(f"wrote {args.json}")
    return 0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("device", help="engine frames/s at batch 1 vs batched, fp32 vs autocast",
                                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--weights", default="synthetic", help="random:SEED, synthetic, coco or a checkpoint")
    parser.add_argument("--size", type=int, default=512, help="network-input size (min = max size), px")
    parser.add_argument("--detections-per-img", type=int, default=100, help="cap on detections per image")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks of every frame")
    parser.add_argument("--codec", default=DEFAULT_LEARNED_CODEC,
                        help="codec of the pre-encoded frames, coded at the edge's default operating point")
    parser.add_argument("--frames", type=int, default=32, help="distinct frames")
    parser.add_argument("--batch", type=int, default=8, help="frames per batch in the batched runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (after one warm-up pass)")
    parser.add_argument("--autocast", type=comma_choices(AUTOCAST_DTYPES), default=["fp16", "bf16"],
                        help=f"comma-separated autocast dtypes: {', '.join(AUTOCAST_DTYPES)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.set_defaults(func=_run)
