"""``fpnlink bench load``: a real ``fpnlink-cloud serve`` process on loopback under N concurrent gRPC streams.

::

    pre-encode --frames scenes (edge half + codec at the edge's default operating point, once) ──> templates
    for each phase (defaults; batched: batches of up to 8; unbatched: one worker, batches of one):
        fpnlink-cloud serve (subprocess) ──> SERVING ──> N streams replay the templates for --duration s
        RSS of the server sampled every second; /metrics scraped at the end (batch-size histogram)
    reference (--reference), before the phases and again after them: in this process, the same frames
        decoded, then the three per-task cloud halves one after another, and the shared pass, per frame

The edge's cost is not measured: frames are encoded before the server starts. Reports frames/s, p50/p95/p99
latency (send to answer), every status code seen, frames sent against answered (lost = sent - answered),
the batch-size histogram and RSS growth between the first and the last minute (or fifth, for short runs).
The results store, when the server has one, is off: this measures the engine path. With ``--reference``,
``service_vs_separate_halves`` is the service's frames/s over the halves', and ``service_vs_shared_pass`` over
the shared pass's alone (in this process, all threads): where the heads are the whole cost (a CPU), the shared
pass is the service's ceiling, so the first ratio cannot exceed ``shared_vs_separate`` by much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fpnlink.edge import EdgeAgent
from fpnlink.edge.operating_point import DEFAULT_MFIP, budgeted_coder, choose_operating_point
from fpnlink.shared.codec import DEFAULT_LEARNED_CODEC, make_codec
from fpnlink.shared.model import TASK_ARCH, TASKS, ModelBundle, ModelConfig, load_bundle, shared_cloud_half
from fpnlink.shared.wire import parse_frame, pb

from .common import comma_choices, machine, median_ms, write_json
from .loadgen import OK, run_load
from .split import scene

PHASES: dict[str, list[str]] = {
    "defaults": [],
    "batched": ["--max-batch-size", "8"],
    "unbatched": ["--workers", "1", "--max-batch-size", "1"],
}
"""Server flags per phase, on top of the common ones: the service's own defaults (on CPU one worker per core and
batches of one, ``CloudSettings.for_process``), those with batches of up to 8 (on a GPU the defaults), and one
worker with batches of one (on CPU, every core on that worker)."""
RSS_PERIOD_S = 1.0
READY_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def encode_frames(bundle: ModelBundle, size: int, count: int, tasks: list[str],
                  codec: str) -> tuple[list[pb.FeatureFrame], str]:
    """``count`` synthetic scenes at ``size`` px through the edge half and ``codec`` at the edge's default
    operating point (its default budget where a profile ships for the codec and backbone), and that point."""
    feature_codec = make_codec(codec)
    agent = EdgeAgent(bundle, feature_codec, tasks, stream_id="load")
    point = choose_operating_point(feature_codec, agent.model_fingerprint)
    rate_control = None if point.budget is None else \
        budgeted_coder(point, feature_codec, DEFAULT_MFIP, agent.tasks, bundle)
    frames = [agent.encode(scene(size, size, seed), seed + 1, rate_control=rate_control).frame
              for seed in range(count)]
    return frames, point.describe()


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc (Linux); None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's RSS every ``RSS_PERIOD_S`` seconds in a thread, as ``(seconds since start, bytes)``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            value = rss_bytes(self.pid)
            if value is not None:
                self.samples.append((time.perf_counter() - start, value))
            self._stop.wait(RSS_PERIOD_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def cloud_process(args: argparse.Namespace, phase_flags: list[str]) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """A ``fpnlink-cloud serve`` subprocess, SERVING; yields it, its gRPC target and its HTTP URL."""
    grpc_port, http_port = free_port(), free_port()
    command = [sys.executable, "-m", "fpnlink.cloud.cli", "serve", "--weights", args.weights,
               "--min-size", str(args.size), "--max-size", str(args.size),
               "--detections-per-img", str(args.detections_per_img), "--host", "127.0.0.1",
               "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--log-level", "warning",
               *(["--threads", str(args.threads)] if args.threads else []), *phase_flags, *args.server_arg]
    env = dict(os.environ, FPNLINK_CLOUD_STORE="false")  # the engine path only
    process = subprocess.Popen(command, env=env)
    target = f"127.0.0.1:{grpc_port}"
    try:
        wait_serving(process, target)
        yield process, target, f"http://127.0.0.1:{http_port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_serving(process: subprocess.Popen, target: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"fpnlink-cloud serve exited with {process.returncode} before serving")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.5)
    raise TimeoutError(f"fpnlink-cloud serve not SERVING after {READY_TIMEOUT_S:.0f} s")


def batch_histogram(metrics_text: str) -> dict[str, int]:
    """Batches per size from the exposition's cumulative ``fpnlink_cloud_batch_size`` buckets."""
    cumulative: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "fpnlink_cloud_batch_size":
            cumulative = sorted((float(s.labels["le"]), s.value) for s in family.samples
                                if s.name.endswith("_bucket"))
    histogram, below = {}, 0.0
    for bound, count in cumulative:
        if count > below:
            histogram["+Inf" if bound == float("inf") else str(int(bound))] = int(count - below)
        below = count
    return histogram


def rss_report(samples: list[tuple[float, int]], duration_s: float) -> dict:
    """Mean RSS over the first and the last window (a minute, or a fifth of shorter runs), and their growth."""
    window = min(60.0, duration_s / 5)
    end = samples[-1][0] if samples else 0.0
    first = [v for t, v in samples if t <= window]
    last = [v for t, v in samples if t >= end - window]
    mib = 1024 * 1024
    report = {"window_s": window, "samples_mib": [[round(t, 1), round(v / mib, 1)] for t, v in samples]}
    if first and last:
        report.update(first_mib=round(statistics.mean(first) / mib, 1), last_mib=round(statistics.mean(last) / mib, 1),
                      growth=round(statistics.mean(last) / statistics.mean(first) - 1, 4))
    return report


def run_phase(args: argparse.Namespace, name: str, templates: list[pb.FeatureFrame]) -> dict:
    with cloud_process(args, PHASES[name]) as (process, target, http_url):
        with RssSampler(process.pid) as sampler:
            tallies, start, last = asyncio.run(run_load(target, templates, args.streams, args.duration,
                                                        args.in_flight))
        metrics_text = urllib.request.urlopen(f"{http_url}/metrics", timeout=30).read().decode()
    codes: Counter = Counter()
    for tally in tallies:
        codes.update(tally.codes)
    latencies = np.array([ms for t in tallies for ms in t.latencies_ms]) if codes[OK] else np.zeros(1)
    sent, answered = sum(t.sent for t in tallies), sum(t.answered for t in tallies)
    elapsed = max(last - start, 1e-9)
    histogram = batch_histogram(metrics_text)
    batches = sum(histogram.values())
    return {
        "server_flags": PHASES[name] + args.server_arg,
        "elapsed_s": round(elapsed, 2),
        "frames_per_s": round(codes[OK] / elapsed, 3),
        "latency_ms": {f"p{q}": round(float(np.percentile(latencies, q)), 1) for q in (50, 95, 99)},
        "status_codes": dict(codes),
        "sent": sent,
        "answered": answered,
        "lost": sent - answered,
        "batch_size_histogram": histogram,
        "mean_batch_size": round(sum(int(k) * v for k, v in histogram.items() if k != "+Inf") / batches, 2)
        if batches else None,
        "rss": rss_report(sampler.samples, args.duration),
    }


def reference_samples(bundle: ModelBundle, templates: list[pb.FeatureFrame], tasks: list[str],
                      repeats: int) -> tuple[list[float], list[float]]:
    """In this process, per frame on the decoded features: ms of the per-task cloud halves one after another,
    and of the shared pass when the bundle's architectures share their heads (else an empty list)."""
    archs = [TASK_ARCH[t] for t in tasks]
    halves = {arch: bundle.cloud_half(arch) for arch in archs}
    shared = shared_cloud_half([bundle.models[a] for a in archs])
    codecs: dict[str, object] = {}
    separate, together = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            for frame in templates:
                header, records = parse_frame(frame)
                codec = codecs.setdefault(header.codec, make_codec(header.codec))
                features = codec.decode(records)
                sizes, originals = [header.input_size], [header.original_size]
                start = time.perf_counter()
                for arch in archs:
                    halves[arch](features, sizes, originals)
                separate.append(1e3 * (time.perf_counter() - start))
                if shared is not None:
                    start = time.perf_counter()
                    shared(features, sizes, originals)
                    together.append(1e3 * (time.perf_counter() - start))
    return separate, together


def reference_report(passes: list[tuple[list[float], list[float]]]) -> dict:
    """Medians over every pass of :func:`reference_samples` (one before the phases, one after), and each pass's."""
    separate = [ms for pass_ in passes for ms in pass_[0]]
    together = [ms for pass_ in passes for ms in pass_[1]]
    report = {"separate_halves_ms": median_ms(separate), "frames_per_s_separate": round(1e3 / median_ms(separate), 3),
              "samples": len(separate), "separate_halves_ms_per_pass": [median_ms(p[0]) for p in passes]}
    if together:
        report.update(shared_pass_ms=median_ms(together),
                      shared_vs_separate=round(median_ms(separate) / median_ms(together), 3))
    return report


def run_load_bench(args: argparse.Namespace) -> dict:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bundle = load_bundle(args.weights, ModelConfig(min_size=args.size, max_size=args.size,
                                                   detections_per_img=args.detections_per_img))
    templates, operating_point = encode_frames(bundle, args.size, args.frames, tasks, args.codec)
    report: dict = {
        "bench": "load",
        "config": {"streams": args.streams, "duration_s": args.duration, "in_flight": args.in_flight,
                   "weights": args.weights, "trained": bundle.trained, "input_size": args.size,
                   "detections_per_img": args.detections_per_img, "tasks": tasks,
                   "codec": args.codec, "operating_point": operating_point, "distinct_frames": len(templates),
                   "frame_bytes": int(statistics.median(t.ByteSize() for t in templates))},
        "phases": {},
        "machine": machine(),
    }
    passes = [reference_samples(bundle, templates, tasks, args.reference_repeats)] if args.reference else []
    for name in args.phases:
        report["phases"][name] = run_phase(args, name, templates)
        write_json(args.json, report)  # partial results survive a later failure
    if args.reference:  # again after the phases, so that both sides see the machine of the whole run
        passes.append(reference_samples(bundle, templates, tasks, args.reference_repeats))
        report["reference"] = reference_report(passes)
    del bundle
    report.update(comparisons(report["phases"], report.get("reference")))
    return report


def comparisons(phases: dict[str, dict], reference: dict | None) -> dict[str, float]:
    """The report's ratios of frames/s: batched over unbatched, and the service's defaults over the separate
    halves and over the shared pass of :func:`reference_report` (each where its parts were measured)."""
    out = {}
    if {"batched", "unbatched"} <= set(phases) and phases["unbatched"]["frames_per_s"]:
        out["batched_vs_unbatched"] = round(phases["batched"]["frames_per_s"] / phases["unbatched"]["frames_per_s"], 3)
    if reference is not None and "defaults" in phases:
        service = phases["defaults"]["frames_per_s"]
        out["service_vs_separate_halves"] = round(service / reference["frames_per_s_separate"], 3)
        if "shared_pass_ms" in reference:
            out["service_vs_shared_pass"] = round(service * reference["shared_pass_ms"] / 1e3, 3)
    return out


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_load_bench(args)
    write_json(args.json, report)
    for name, phase in report["phases"].items():
        print(f"{name}: {phase['frames_per_s']} frames/s, latency {phase['latency_ms']}, codes "
              f"{phase['status_codes']}, sent {phase['sent']} answered {phase['answered']} lost {phase['lost']}, "
              f"batches {phase['batch_size_histogram']}, RSS growth {phase['rss'].get('growth')}")
    for key in ("reference", "batched_vs_unbatched", "service_vs_separate_halves", "service_vs_shared_pass"):
        if key in report:
            print(f"{key}: {report[key]}")
    print(f"wrote {args.json}")
    return 0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("load", help="a real cloud process under N concurrent gRPC streams",
                                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8, help="concurrent gRPC Stream calls")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sending per phase")
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--weights", default="synthetic", help="random:SEED, synthetic, coco or a checkpoint")
    parser.add_argument("--size", type=int, default=128, help="network-input size (min = max size), px")
    parser.add_argument("--detections-per-img", type=int, default=100,
                        help="cap on detections per image (the service's default 100; the tests use 5)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks every frame asks for")
    parser.add_argument("--codec", default=DEFAULT_LEARNED_CODEC,
                        help="codec of the pre-encoded frames, coded at the edge's default operating point")
    parser.add_argument("--frames", type=int, default=8, help="distinct pre-encoded scenes, replayed")
    parser.add_argument("--in-flight", type=int, default=2, help="frames outstanding per stream")
    parser.add_argument("--phases", type=comma_choices(PHASES), default=list(PHASES),
                        help=f"comma-separated server configurations: {', '.join(PHASES)}")
    parser.add_argument("--reference", action="store_true",
                        help="also time the per-task cloud halves one after another (and the shared pass) here")
    parser.add_argument("--reference-repeats", type=int, default=2,
                        help="passes over the frames for --reference, before and after the phases each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads here and in the server (0: default)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra fpnlink-cloud serve argument for every phase (repeatable), "
                             "e.g. --server-arg=--workers=2")
    parser.set_defaults(func=_run)
