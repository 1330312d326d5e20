"""``fpnlink bench store``: what the results store costs. Frames per second and p99 frame latency of one cloud
with the store off, on an SQLite file (WAL) and on PostgreSQL (a throwaway server from the installed binaries,
fsync on), under the same load: ``--clients`` closed-loop clients, each sending pre-encoded frames with unary
``Analyze`` one after the other (latency: send to answer, the store's commit included).

Every frame gets a fresh id, so the heads run for each (nothing is answered from a cache or the store). The
store's own cost is also read from the cloud's metrics: transaction time per committed frame
(``commit_ms_per_frame``), spent in the writer thread, off the engine's.
Configurations are interleaved within each repeat, so that drift of a shared machine hits them alike; the
report gives medians over repeats, and the store's cost as ``1 - fps(store) / fps(off)`` (target <= 10%).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fpnlink.cloud import CloudService, CloudSettings
from fpnlink.edge import Client, EdgeAgent, LinkError
from fpnlink.shared.codec import make_codec
from fpnlink.shared.model import ModelBundle, ModelConfig, load_bundle
from fpnlink.shared.wire import pb

from ..postgres import TemporaryPostgres
from .common import machine, write_json

CONFIGS = ("off", "sqlite", "postgresql")
TARGET_COST_PCT = 10.0
TASKS = ["detect"]
WARMUP_FRAMES = 4


def _frames(bundle: ModelBundle, size: int, images: int) -> list[pb.FeatureFrame]:
    agent = EdgeAgent(bundle, make_codec("quant"), TASKS, stream_id="bench")
    generator = torch.Generator().manual_seed(0)
    return [agent.encode(torch.rand(3, size, size, generator=generator), i).frame for i in range(images)]


def _restamped(templates: list[pb.FeatureFrame], stream_id: str, first_id: int, count: int) -> list[pb.FeatureFrame]:
    out = []
    for i in range(count):
        frame = pb.FeatureFrame()
        frame.CopyFrom(templates[i % len(templates)])
        frame.stream_id, frame.frame_id = stream_id, first_id + i
        out.append(frame)
    return out


@contextlib.contextmanager
def _database(config: str, folder: Path, server: TemporaryPostgres | None, run: int) -> Iterator[str | None]:
    if config == "off":
        yield None
    elif config == "sqlite":
        yield f"sqlite:///{folder / f'bench-{run}.db'}"
    else:
        with server.scratch_database(f"bench_{run}") as url:
            yield url


def _one_run(bundle: ModelBundle, templates: list[pb.FeatureFrame], database_url: str | None, frames: int,
             clients: int, workers: int) -> dict:
    config = bundle.config
    settings = CloudSettings(host="127.0.0.1", grpc_port=0, http_port=0, weights=bundle.weights,
                             min_size=config.min_size, max_size=config.max_size, warmup=False, codecs=["quant"],
                             workers=workers, store=database_url is not None, database_url=database_url,
                             log_level="warning")
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    with CloudService(settings, bundle_loader=lambda _: bundle).run_in_background() as cloud:
        with Client(cloud.grpc_target) as client:
            list(client.stream(_restamped(templates, "warmup", 0, WARMUP_FRAMES)))

        def drive(index: int) -> None:
            with Client(cloud.grpc_target) as client:
                for frame in _restamped(templates, f"s{index}", 0, frames // clients):
                    start = time.perf_counter()
                    try:
                        client.analyze(frame, check=False)
                    except LinkError as exc:
                        with lock:
                            failures.append(exc.code.name if exc.code else "PROTOCOL")
                        continue
                    with lock:
                        latencies.append(1e3 * (time.perf_counter() - start))

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - start
        stored = cloud.service.recorder.store.count() if cloud.service.recorder is not None else 0
        registry = cloud.service.metrics.registry
        commit_s = registry.get_sample_value("fpnlink_cloud_store_write_seconds_sum") or 0.0
        committed = registry.get_sample_value("fpnlink_cloud_stored_frames_total") or 0.0
    if failures:
        raise RuntimeError(f"{len(failures)} frames failed: {sorted(set(failures))}")
    return {"fps": len(latencies) / wall_s, "p99_ms": float(np.percentile(latencies, 99)),
            "p50_ms": float(np.percentile(latencies, 50)), "frames": len(latencies),
            "stored": stored - (WARMUP_FRAMES if database_url else 0),
            "commit_ms_per_frame": 1e3 * commit_s / committed if committed else None}


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def run_store_bench(frames: int = 200, clients: int = 4, repeats: int = 3, size: int = 128,
                    weights: str = "random:0", workers: int = 1, configs: tuple[str, ...] = CONFIGS) -> dict:
    """Measure every configuration ``repeats`` times (interleaved); medians per configuration."""
    bundle = load_bundle(weights, ModelConfig(min_size=size, max_size=size, detections_per_img=100))
    templates = _frames(bundle, size, images=8)
    runs: dict[str, list[dict]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory(prefix="fpnlink-bench-store-") as folder, contextlib.ExitStack() as stack:
        server = stack.enter_context(TemporaryPostgres(fsync=True)) if "postgresql" in configs else None
        for run in range(repeats):
            for config in configs:
                with _database(config, Path(folder), server, run) as url:
                    runs[config].append(_one_run(bundle, templates, url, frames, clients, workers))
    summary = {config: {"fps": round(statistics.median(r["fps"] for r in rs), 2),
                        "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 2),
                        "p50_ms": round(statistics.median(r["p50_ms"] for r in rs), 2),
                        "stored_per_run": [r["stored"] for r in rs],
                        "commit_ms_per_frame": _median_or_none([r["commit_ms_per_frame"] for r in rs])}
               for config, rs in runs.items()}
    off = summary.get("off", {}).get("fps")
    cost = {config: round(100 * (1 - summary[config]["fps"] / off), 2)
            for config in configs if config != "off" and off}
    return {
        "summary": summary,
        "store_cost_pct": cost,
        "target_cost_pct": TARGET_COST_PCT,
        "target_met": all(c <= TARGET_COST_PCT for c in cost.values()),
        "runs": runs,
        "setup": {"frames_per_run": frames, "clients": clients, "repeats": repeats, "size": size, "weights": weights,
                  "workers": workers, "codec": "quant", "tasks": TASKS, "postgresql_fsync": True,
                  "sqlite": "WAL, synchronous=NORMAL"},
        "machine": machine(),
    }


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"fpnlink bench store: unknown configs {unknown}; choose from {','.join(CONFIGS)}")
    report = run_store_bench(args.frames, args.clients, args.repeats, args.size, args.weights, args.workers, configs)
    write_json(args.json, report)
    for config, entry in report["summary"].items():
        commit = entry["commit_ms_per_frame"]
        print(f"{config:>10}: {entry['fps']:.2f} frames/s, p99 {entry['p99_ms']:.1f} ms, p50 {entry['p50_ms']:.1f} ms"
              + (f", commit {commit:.2f} ms/frame" if commit is not None else ""))
    print(f"store cost {report['store_cost_pct']} % (target <= {TARGET_COST_PCT} %): "
          f"{'met' if report['target_met'] else 'NOT met'}")
    print(f"wrote {args.json}")
    return 0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser("store", help="frames/s and p99 latency with the results store off, on "
                                         "SQLite and on PostgreSQL", description=__doc__)
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--frames", type=int, default=200, help="frames per run (split over the clients)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent closed-loop clients")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; medians are reported")
    parser.add_argument("--size", type=int, default=128, help="network-input side in pixels")
    parser.add_argument("--weights", default="random:0", help="random:SEED, synthetic, coco or a checkpoint path")
    parser.add_argument("--workers", type=int, default=1, help="cloud engine workers")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which of off,sqlite,postgresql to run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.set_defaults(func=_run)
