"""``fpnlink bench edge``: the edge's front half on torch against ONNX Runtime, its memory, and its accuracy.

One run measures, at 800x1216 (torchvision's default resize keeps it):

- ``speed``: backbone ms (transform + ResNet50 + FPN) with eager torch and with ONNX Runtime on CPU, their
  ratio, and encode ms (codec + frame assembly), medians over ``--repeats`` frames;
- ``features``: the largest absolute and relative (to the scale's largest magnitude) difference between the
  two backends' P2..P5;
- ``rss``: peak resident memory of a fresh process that loads the front half only, the whole detector the
  edge loaded before (``--tasks``' architectures) and all three detectors, then codes one frame;
- with ``--data``: box AP on ``--ap-images`` val images through the whole path (edge agent, loopback gRPC,
  an in-process cloud) with each backend.

Each ONNX Runtime measurement is also made for an int8 copy (static QDQ quantisation calibrated on
``--calib-scenes`` synthetic scenes, :func:`~fpnlink.edge.backends.quantize_int8`): its speed, its feature
error against torch and its box AP are its accuracy cost. fp16 is not measured: the CPU execution provider
has no fast fp16 convolutions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from fpnlink.cloud.service import CloudService
from fpnlink.cloud.settings import CloudSettings
from fpnlink.edge import Client, EdgeAgent
from fpnlink.edge.backends import choose_providers, export_onnx, load_onnx_front, quantize_int8
from fpnlink.shared.codec import make_codec
from fpnlink.shared.model import TASK_ARCH, ModelConfig, load_bundle
from fpnlink.shared.model.front import FrontHalf, load_front_half
from fpnlink.shared.wire import result_to_dict

from ..evaluation import ApAccumulator, load_dataset
from .common import machine, median_ms, write_json
from .split import FULL_SIZE, scene

RSS_SCRIPT = """
import re, sys, torch
from fpnlink.edge import EdgeAgent
from fpnlink.shared.codec import make_codec
from fpnlink.shared.model import ModelConfig, load_bundle
from fpnlink.shared.model.front import load_front_half
from fpnlink.tools.bench.split import scene
torch.set_num_threads(1)
def hwm():  # this process's peak RSS in KiB (ru_maxrss would keep the parent's peak across fork + exec)
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
weights, what, archs, h, w = sys.argv[1], sys.argv[2], tuple(sys.argv[3].split(",")), int(sys.argv[4]), int(sys.argv[5])
config = ModelConfig(min_size=min(h, w), max_size=max(1333, h, w))
before = hwm()
model = load_front_half(weights, config, archs) if what == "front" else load_bundle(weights, config, archs=archs)
loaded = hwm()
tasks = {"faster": "detect", "mask": "segment", "keypoint": "keypoints"}
EdgeAgent(model, make_codec("quant"), [tasks[archs[0]]], "rss").encode(scene(h, w), 1)
print(before, loaded, hwm())
"""


def _int8_front(front: FrontHalf, fp32: Path, size: tuple[int, int], scenes: int, threads: int) -> FrontHalf:
    """An int8 ONNX Runtime front half calibrated on ``scenes`` synthetic scenes of ``size``."""
    calibration = [front.edge.transform([scene(*size, seed=100 + i)])[0].tensors for i in range(scenes)]
    return load_onnx_front(quantize_int8(fp32, fp32.with_name("int8.onnx"), calibration), threads=threads)


def _backbone_ms(agent: EdgeAgent, image: torch.Tensor, repeats: int) -> tuple[list[float], list[float]]:
    agent.encode(image, 1)  # warm-up: allocations, ORT's first-run optimisation
    stages = [agent.encode(image, i + 2).stage_ms for i in range(repeats)]
    return [s["backbone"] for s in stages], [s["encode"] for s in stages]


def feature_difference(torch_front: FrontHalf, ort_front: FrontHalf, image: torch.Tensor) -> dict[str, Any]:
    """Per scale and overall: max |ort - torch| and that over max |torch|."""
    with torch.no_grad():
        reference, _, _ = torch_front.edge([image])
    features, _, _ = ort_front.edge([image])
    out: dict[str, Any] = {}
    for name, expected in reference.items():
        diff = float((features[name] - expected).abs().max())
        out[name] = {"max_abs": diff, "max_rel": diff / max(float(expected.abs().max()), 1e-12)}
    out["max_abs"] = max(v["max_abs"] for v in out.values())
    out["max_rel"] = max(v["max_rel"] for k, v in out.items() if isinstance(v, dict))
    return out


def peak_rss_mb(weights: str, what: str, archs: tuple[str, ...], size: tuple[int, int]) -> dict[str, float]:
    """Peak RSS (MB) of a fresh process: at start, after loading, after coding one frame."""
    command = [sys.executable, "-c", RSS_SCRIPT, weights, what, ",".join(archs), str(size[0]), str(size[1])]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    start, loaded, peak = (int(v) / 1024 for v in output[-3:])  # VmHWM is in KiB
    return {"start_mb": round(start, 1), "loaded_mb": round(loaded, 1), "peak_mb": round(peak, 1)}


def box_ap(weights: str, fronts: dict[str, FrontHalf], data: Path, images: int, codec_name: str,
           phi: float | None) -> dict[str, Any]:
    """Box AP of each front half through the whole path on ``images`` val images of ``data``."""
    dataset = load_dataset(data, "val", limit=images)
    any_front = next(iter(fronts.values()))
    config = any_front.config
    bundle = load_bundle(weights, config, archs=("faster",))
    settings = CloudSettings(host="127.0.0.1", grpc_port=0, http_port=0, weights=weights, min_size=config.min_size,
                             max_size=config.max_size, warmup=False, store=False)
    accumulator = ApAccumulator(dataset)
    codec = make_codec(codec_name)
    scale_phi = None if phi is None else dict.fromkeys("0123", phi)
    with CloudService(settings, bundle_loader=lambda _: bundle).run_in_background() as cloud, \
            Client(cloud.grpc_target) as client:
        for backend, front in fronts.items():
            agent = EdgeAgent(front, codec, ["detect"], stream_id=f"bench-{backend}")
            ids = dataset.image_ids
            frames = (agent.encode(dataset.image(image_id), i + 1, scale_phi).frame for i, image_id in enumerate(ids))
            for result in client.stream(frames, ordered=True):
                found = result_to_dict(result).get("detect", [])
                output = {"boxes": torch.tensor([d["box"] for d in found]).reshape(-1, 4),
                          "labels": torch.tensor([d["label"] for d in found], dtype=torch.int64),
                          "scores": torch.tensor([d["score"] for d in found])}
                accumulator.add(backend, "faster", ids[result.frame_id - 1], output)
    return {"images": len(dataset.image_ids), "codec": codec_name, "phi": phi,
            **{backend: accumulator.score(backend)["box"] for backend in fronts}}


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = FULL_SIZE
    config = ModelConfig(min_size=height, max_size=1333)
    archs = tuple(dict.fromkeys(TASK_ARCH[t] for t in args.tasks.split(",")))
    image = scene(height, width)
    report: dict[str, Any] = {"machine": machine(), "weights": args.weights, "size": [height, width],
                              "repeats": args.repeats, "providers": choose_providers()}
    with tempfile.TemporaryDirectory() as tmp:
        torch_front = load_front_half(args.weights, config, archs)
        fp32 = export_onnx(torch_front, Path(tmp) / "front.onnx")
        ort_front = load_onnx_front(fp32, threads=args.threads)
        int8_front = _int8_front(torch_front, fp32, (height, width), args.calib_scenes, args.threads)
        codec = make_codec(args.codec)
        timings = {}
        for backend, front in (("torch", torch_front), ("onnxruntime", ort_front), ("onnxruntime_int8", int8_front)):
            agent = EdgeAgent(front, codec, [args.tasks.split(",")[0]], "bench")
            backbone, encode = _backbone_ms(agent, image, args.repeats)
            timings[backend] = {"backbone_ms": median_ms(backbone), "encode_ms": median_ms(encode)}
        report["speed"] = {**timings, "codec": args.codec,
                           "torch_over_onnxruntime": round(timings["torch"]["backbone_ms"]
                                                           / timings["onnxruntime"]["backbone_ms"], 3),
                           "torch_over_onnxruntime_int8": round(timings["torch"]["backbone_ms"]
                                                                / timings["onnxruntime_int8"]["backbone_ms"], 3)}
        report["features"] = feature_difference(torch_front, ort_front, image)
        report["features_int8"] = feature_difference(torch_front, int8_front, image)
        report["fingerprints_equal"] = torch_front.backbone_fingerprint == ort_front.backbone_fingerprint
    report["rss"] = {"front_half": peak_rss_mb(args.weights, "front", archs, FULL_SIZE),
                     "whole_detectors": peak_rss_mb(args.weights, "bundle", archs, FULL_SIZE),
                     "all_three_detectors": peak_rss_mb(args.weights, "bundle", ("faster", "mask", "keypoint"),
                                                        FULL_SIZE)}
    report["rss"]["front_over_whole_peak"] = round(report["rss"]["front_half"]["peak_mb"]
                                                   / report["rss"]["whole_detectors"]["peak_mb"], 3)
    if args.data is not None:
        ap_config = ModelConfig(min_size=args.ap_size, max_size=args.ap_size)
        front = load_front_half(args.ap_weights, ap_config, ("faster",))
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(front, Path(tmp) / "ap.onnx")
            fronts = {"torch": front, "onnxruntime": load_onnx_front(fp32, threads=args.threads),
                      "onnxruntime_int8": _int8_front(front, fp32, (args.ap_size, args.ap_size), args.calib_scenes,
                                                      args.threads)}
            report["box_ap"] = {"weights": args.ap_weights, "size": args.ap_size,
                                **box_ap(args.ap_weights, fronts, args.data, args.ap_images, args.codec, args.phi)}
    write_json(args.json, report)
    print(json.dumps({k: report[k] for k in ("speed", "rss", "fingerprints_equal") if k in report}, indent=2))
    if "box_ap" in report:
        print(json.dumps(report["box_ap"], indent=2))
    return 0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("edge", help="front half: torch vs ONNX Runtime, RSS, box AP per backend",
                                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--weights", default="random:0", help="weights of the speed and memory runs")
    parser.add_argument("--tasks", default="detect", help="the edge's tasks (which detector it loaded whole)")
    parser.add_argument("--codec", default="quant", help="codec of the encode timing and the AP runs")
    parser.add_argument("--phi", type=float, default=None, help="phi of the AP runs (codec default)")
    parser.add_argument("--repeats", type=int, default=5, help="frames per backend; medians are reported")
    parser.add_argument("--threads", type=int, default=0, help="torch and ORT threads (0: their defaults)")
    parser.add_argument("--data", type=Path, default=None, help="an `fpnlink data synth` folder: adds box AP")
    parser.add_argument("--ap-images", type=int, default=100, help="val images of the AP runs")
    parser.add_argument("--ap-weights", default="synthetic", help="weights of the AP runs")
    parser.add_argument("--ap-size", type=int, default=256, help="network-input size of the AP runs")
    parser.add_argument("--calib-scenes", type=int, default=4, help="synthetic scenes calibrating the int8 model")
    parser.set_defaults(func=_run)
