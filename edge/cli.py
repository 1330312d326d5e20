"""``fpnlink-edge``: stream images, video or a camera to the cloud through an on-disk spool; record its results.

``fpnlink-edge run`` checks the cloud first (reachable, SERVING, same backbone and codec
fingerprints), then encodes each frame into the spool while a link thread drains it, reconnecting
whenever the link drops (see :mod:`fpnlink.edge.stream`). It prints one line per frame and appends
exactly one JSON line per frame to ``--out`` as results arrive. An interrupted or killed run resumes
from the spool when started again with the same source.

Exit codes: 0 the run finished with at least one frame answered without error; 1 the cloud is
unreachable at start or does not match the edge, the spool cannot be used, or no frame succeeded;
2 bad arguments; 130 interrupted (unanswered frames stay spooled).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..shared.codec import DEFAULT_LEARNED_CODEC, available_codecs
from ..shared.errors import ConfigError, FingerprintMismatchError, UnsupportedError, WeightsError
from ..shared.identity import STREAM_SEPARATOR, certificate_identity
from ..shared.mfiba import BudgetedCoder
from ..shared.model import TASK_ARCH, TASKS, TRANSMITTED_SCALES, ModelBundle, ModelConfig, load_bundle
from ..shared.wire import pb
from ..shared.model.front import FrontHalf, load_front_half
from .agent import EdgeAgent, EncodedFrame
from .backends import BACKENDS, export_onnx, load_onnx_front
from .client import Client, LinkError, check_compatible
from .metrics import serve_metrics
from .operating_point import DEFAULT_BUDGET, budgeted_coder, choose_operating_point
from .rate import LinkBudget, LinkRate, parse_max_kbps
from .results import ResultLog
from .settings import EdgeSettings
from .sources import Source, SourceError, SourceFrame, open_source
from .spool import FULL_POLICIES, Spool, SpoolError, default_spool_path
from .stream import StreamCounts, StreamLoop

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "fpnlink-edge"
log = logging.getLogger(PROG)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="stream images to the cloud and write its results",
        description="Flags override FPNLINK_EDGE_* environment variables; unset ones keep the defaults.",
    )
    run.add_argument("--source", required=True,
                     help="a folder of images, an image or video file, a camera (/dev/video0) or an rtsp://, "
                          "rtmp:// or http(s):// stream")
    run.add_argument("--every", type=int, help="keep every N-th source frame (default 1: all)")
    run.add_argument("--fps", type=float, help="at most this many frames per second (live sources drop the "
                                               "rest, files wait)")
    run.add_argument("--recursive", action="store_true", default=None, help="include subfolders of --source")
    run.add_argument("--server", help="cloud gRPC address host:port (default localhost:50051)")
    run.add_argument("--tasks", help=f"comma-separated subset of {','.join(TASKS)} (default detect)")
    run.add_argument("--codec", help=f"feature codec, one of {available_codecs()} (default {DEFAULT_LEARNED_CODEC})")
    run.add_argument("--codec-checkpoint", type=Path, help="weights of the learned codec (default: the shipped "
                                                          "one); the cloud must serve the same file")
    run.add_argument("--phi", type=float, help="fixed rate parameter for every scale instead of a budget")
    run.add_argument("--budget", help=f"frame budget: 0.05bpp, 30KB or 2Mbps@10fps; MFIBA picks phi per scale and "
                                      f"frame (default {DEFAULT_BUDGET} where a profile ships for the codec and "
                                      "backbone, else the codec's default phi)")
    run.add_argument("--mfip", help="scale importance under --budget: full, fast, uniform or fixed:w2,w3,w4,w5 "
                                    "(default fast)")
    run.add_argument("--profile", type=Path, help="MFIBA profile from `fpnlink mfiba calibrate` (default: the one "
                                                  "shipped for the codec and backbone)")
    run.add_argument("--weights", help="synthetic, coco, random:SEED or a checkpoint path; must match the cloud's "
                                       "(default synthetic)")
    run.add_argument("--out", type=Path, help="JSON Lines results file, written as results arrive")
    run.add_argument("--min-size", type=int, help="network-input shorter side (default: the cloud's)")
    run.add_argument("--max-size", type=int, help="network-input longer-side cap (default: the cloud's)")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    run.add_argument("--stream-id", help="stream id stamped on every frame (default: the spool's, made unique "
                                         "once and kept)")
    run.add_argument("--spool", type=Path, help=f"store-and-forward spool file (default {default_spool_path()})")
    run.add_argument("--spool-quota", dest="spool_quota_bytes", type=int,
                     help="most bytes of frames spooled (default 1 GiB)")
    run.add_argument("--spool-ttl", dest="spool_ttl_s", type=float,
                     help="seconds an unsent frame is kept before it is dropped (default 86400)")
    run.add_argument("--spool-full", choices=FULL_POLICIES,
                     help="what a full spool drops from a live source (default drop-oldest; files wait)")
    run.add_argument("--live-window", dest="live_window_s", type=float,
                     help="frames spooled this many seconds ago or less go out before the backlog (default 2)")
    run.add_argument("--window", type=int, help="frames in flight on the link (default 4)")
    run.add_argument("--frame-timeout", dest="frame_timeout_s", type=float,
                     help="seconds a frame may wait for its result before the link is reopened (default 60)")
    run.add_argument("--max-backoff", dest="max_backoff_s", type=float,
                     help="longest wait in seconds between reconnect attempts (default 5)")
    run.add_argument("--connect-timeout", dest="connect_timeout_s", type=float,
                     help="seconds to wait for the cloud to be SERVING (default 10)")
    run.add_argument("--max-frame-bytes", type=int, help="largest gRPC message (default 256 MiB)")
    run.add_argument("--tls-ca", type=Path, help="PEM CA of the cloud's certificate: connect with TLS")
    run.add_argument("--tls-cert", type=Path, help="this device's PEM client certificate (mutual TLS; its "
                                                   "common name is the device identity)")
    run.add_argument("--tls-key", type=Path, help="the client certificate's PEM key")
    run.add_argument("--token", help="bearer token with scope ingest (FPNLINK_EDGE_TOKEN keeps it out of ps)")
    run.add_argument("--max-kbps", help="link-adaptive rate instead of --budget: KBPS, auto (follow the link) or "
                                        "auto:KBPS (follow it, at most KBPS); needs a profile")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: any free one)")
    run.add_argument("--backend", choices=BACKENDS, help="front-half backend (default torch)")
    run.add_argument("--onnx", type=Path, help="ONNX model from `fpnlink-edge export` (--backend onnxruntime; "
                                               "exported into the spool's folder when omitted)")
    run.set_defaults(func=run_command)
    export = commands.add_parser("export", help="write the front half (ResNet50 + FPN) as ONNX",
                                 description="The graph takes [1, 3, H, W] normalised, padded images (any H, W); "
                                             "the resize stays in Python. Its metadata keeps the backbone "
                                             "fingerprint, so both backends make frames the same cloud accepts.")
    export.add_argument("--weights", default="random:0", help="random:SEED, coco, synthetic or a checkpoint path")
    export.add_argument("--tasks", default="detect", help="tasks whose backbone to export (default detect)")
    export.add_argument("--min-size", type=int, default=800, help="network-input shorter side (the cloud's)")
    export.add_argument("--max-size", type=int, default=1333, help="network-input longer-side cap (the cloud's)")
    export.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    export.set_defaults(func=export_command)
    return parser


def export_command(args: argparse.Namespace) -> int:
    """``fpnlink-edge export``: the front half as ONNX."""
    try:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        archs = tuple(dict.fromkeys(TASK_ARCH[t] for t in tasks))
        front = load_front_half(args.weights, ModelConfig(min_size=args.min_size, max_size=args.max_size), archs)
        path = export_onnx(front, args.out)
    except KeyError as exc:
        return _usage_error(f"--tasks: unknown task {exc}; choose from {','.join(TASKS)}")
    except (ValueError, WeightsError) as exc:
        return _usage_error(str(exc))
    print(f"{PROG}: wrote {path} ({path.stat().st_size:,} bytes; backbone {front.backbone_fingerprint}, "
          f"weights {args.weights}, input {args.min_size}/{args.max_size})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the error
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _usage_error(message: str) -> int:
    print(f"{PROG} run: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _failure(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_FAILED


def _settings(args: argparse.Namespace) -> EdgeSettings:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "source") and v is not None}
    return EdgeSettings(**flags)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"--{str(item['loc'][0]).replace('_', '-')}: {message}" if item["loc"] else message)
    return "; ".join(parts)


def _untrained_notice(what: str) -> None:
    bar = "!" * 78
    print(f"{bar}\n!! UNTRAINED WEIGHTS: {what}.\n!! Every detection is noise: use this run to test the plumbing "
          f"only (--weights coco|synthetic|PATH for real results).\n{bar}", file=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    """``fpnlink-edge run``: validate, check the cloud, then stream."""
    try:
        settings = _settings(args)
    except ValidationError as exc:
        return _usage_error(_describe(exc))
    try:
        codec = settings.build_codec()
    except WeightsError as exc:
        return _usage_error(f"--codec-checkpoint: {exc}")
    try:
        source = open_source(args.source, recursive=settings.recursive, every=settings.every, fps=settings.fps)
    except SourceError as exc:
        return _usage_error(str(exc))
    if settings.threads:
        torch.set_num_threads(settings.threads)

    try:
        client = Client(settings.server, max_frame_bytes=settings.max_frame_bytes, tls_ca=settings.tls_ca,
                        tls_cert=settings.tls_cert, tls_key=settings.tls_key, token=settings.token)
        device = certificate_identity(settings.tls_cert.read_bytes(), str(settings.tls_cert)) \
            if settings.tls_cert else None
    except (ConfigError, OSError) as exc:
        return _usage_error(str(exc))
    try:
        spool = Spool(settings.spool or default_spool_path(), quota_bytes=settings.spool_quota_bytes,
                      ttl_s=settings.spool_ttl_s, full_policy=settings.spool_full,
                      live_window_s=settings.live_window_s)
    except SpoolError as exc:
        client.close()
        return _failure(str(exc))
    with client, spool:
        try:
            client.wait_ready(settings.connect_timeout_s)
            caps = client.capabilities()
        except LinkError as exc:
            return _failure(f"cannot reach the fpnlink cloud at {settings.server}: {exc}")

        try:
            config = _model_config(settings, caps)
        except FingerprintMismatchError as exc:
            return _failure(f"edge and cloud do not match: {exc}")
        archs = tuple(dict.fromkeys(TASK_ARCH[t] for t in settings.tasks))
        heads = settings.phi is None and settings.mfip == "full"  # full MFIP runs the heads at the edge
        try:
            bundle = load_bundle(settings.weights, config, archs=archs) if heads else None
            front = _front_half(settings, config, archs, bundle, spool)
        except WeightsError as exc:
            return _usage_error(f"--weights/--onnx: {exc}")
        except FingerprintMismatchError as exc:
            return _failure(f"edge and cloud do not match: {exc}")
        if not front.trained:
            _untrained_notice(f"the edge runs --weights {settings.weights}")
        elif not caps.trained:
            _untrained_notice(f"the cloud at {settings.server} runs {caps.weights}")
        stream_id = _stream_id(spool, settings.stream_id, device)
        try:
            agent = EdgeAgent(front, codec, settings.tasks, stream_id)
            check_compatible(caps, tasks=agent.tasks, model_fingerprint=agent.model_fingerprint,
                             codec=agent.codec.name, codec_fingerprint=agent.codec.fingerprint)
        except (FingerprintMismatchError, UnsupportedError) as exc:
            return _failure(f"edge and cloud do not match: {exc} (edge weights {settings.weights!r})")

        try:
            point = choose_operating_point(agent.codec, agent.model_fingerprint, phi=settings.phi,
                                           budget=settings.budget, link_adaptive=settings.max_kbps is not None,
                                           profile_path=settings.profile)
            rate_control = None if point.budget is None else \
                budgeted_coder(point, agent.codec, settings.mfip, agent.tasks, bundle)
        except FingerprintMismatchError as exc:
            return _failure(str(exc))
        except ValueError as exc:
            return _usage_error(f"--budget/--profile/--mfip: {exc}")
        phi = None if point.phi is None else {name: point.phi for name in TRANSMITTED_SCALES}
        if settings.max_kbps is not None:
            rate = f"{settings.max_kbps} kbps link-adaptive, MFIBA profile {point.profile_source}"
        else:
            rate = point.describe()
        if rate_control is not None:
            rate += f" (MFIP {settings.mfip})"
        if source.replayable:
            source.start = spool.cursor(source.identity)
        resume = source.start > 0 or spool.depth()[0] > 0
        kind = f"{len(source)} frame(s)" if source.replayable else "live frames"
        print(f"{PROG}: {kind} from {args.source} -> {settings.server} "
              f"(stream {stream_id}, tasks {','.join(agent.tasks)}, spool {spool.path})")
        print(f"{PROG}: operating point: codec {agent.codec.name} ({agent.codec.fingerprint}), {rate}, weights "
              f"{settings.weights} ({agent.model_fingerprint}), input {config.min_size}/{config.max_size}")
        if resume:
            print(f"{PROG}: resuming: {spool.depth()[0]} frame(s) spooled, source from frame {source.start}")
        results = ResultLog(settings.out, resume=resume)
        try:
            return _stream(settings, client, agent, source, spool, results, phi, rate_control)
        finally:
            results.close()


def _front_half(settings: EdgeSettings, config: ModelConfig, archs: tuple[str, ...], bundle: ModelBundle | None,
                spool: Spool) -> FrontHalf:
    """The front half on the chosen backend; only the backbone is loaded unless ``bundle`` is given."""
    if settings.backend == "onnxruntime" and settings.onnx is not None:
        front = load_onnx_front(settings.onnx, threads=settings.threads or 0)
        if (front.config.min_size, front.config.max_size) != (config.min_size, config.max_size):
            raise FingerprintMismatchError(
                f"{settings.onnx} was exported for input {front.config.min_size}/{front.config.max_size}, the "
                f"cloud resizes to {config.min_size}/{config.max_size}; export it again with those sizes")
        return front
    if bundle is not None:
        front = FrontHalf.from_bundle(bundle, settings.tasks)
    else:
        front = load_front_half(settings.weights, config, archs)
    if settings.backend == "torch":
        return front
    path = spool.path.parent / "onnx" / f"{front.backbone_fingerprint}.onnx"
    if not path.is_file():
        log.info("exporting the front half to %s (once per backbone and input size)", path)
        export_onnx(front, path)
    return load_onnx_front(path, threads=settings.threads or 0)


def _model_config(settings: EdgeSettings, caps: pb.Capabilities) -> ModelConfig:
    """The network-input sizes: the cloud's; flags may only repeat them (they shape the features)."""
    default = ModelConfig()
    cloud_min, cloud_max = caps.min_size or default.min_size, caps.max_size or default.max_size
    given = {"--min-size": (settings.min_size, cloud_min), "--max-size": (settings.max_size, cloud_max)}
    conflicts = [f"{flag} {mine}" for flag, (mine, cloud) in given.items() if mine not in (None, cloud)]
    if conflicts:
        raise FingerprintMismatchError(
            f"the cloud resizes inputs with min_size {cloud_min}, max_size {cloud_max}, but the edge was given "
            f"{' '.join(conflicts)}; drop --min-size/--max-size to follow the cloud")
    return ModelConfig(min_size=cloud_min, max_size=cloud_max)


def _stream_id(spool: Spool, given: str | None, device: str | None) -> str:
    """``--stream-id`` when given (and kept), else the spool's; a device's stream lies under its own name."""
    if given:
        spool.set_stream_id(given)
        return given
    stream_id = spool.stream_id(lambda: _unique_stream_id(device))
    if device and not stream_id.startswith(f"{device}{STREAM_SEPARATOR}"):
        stream_id = _unique_stream_id(device)
        spool.set_stream_id(stream_id)
    return stream_id


def _unique_stream_id(device: str | None = None) -> str:
    """A stream id unique per run; under the device's own name (which it owns) with a client certificate."""
    run = f"{socket.gethostname()}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    return f"{device}{STREAM_SEPARATOR}{run}" if device else run


def _stream(settings: EdgeSettings, client: Client, agent: EdgeAgent, source: Source, spool: Spool,
            results: ResultLog, phi: dict[str, float] | None, rate_control: BudgetedCoder | None) -> int:
    """Run the shared streaming loop; print one line per frame and the summary."""
    def on_encoded(_: SourceFrame, encoded: EncodedFrame) -> dict[str, Any]:
        return {} if rate_control is None else {"rate": _rate_record(rate_control, encoded)}

    budget_hook = None
    if settings.max_kbps is not None and rate_control is not None:
        cap, auto = parse_max_kbps(settings.max_kbps)
        budget_hook = LinkBudget(rate_control, LinkRate(cap, auto), settings.fps)
    loop = StreamLoop(agent, source, spool, client, results, phi=phi, rate_control=rate_control,
                      on_encoded=on_encoded, on_row=lambda row: tqdm.write(_frame_line(row)), window=settings.window,
                      frame_timeout_s=settings.frame_timeout_s, max_backoff_s=settings.max_backoff_s,
                      budget_hook=budget_hook)
    if settings.metrics_port is not None:
        try:
            port = serve_metrics(loop, settings.metrics_port)
        except OSError as exc:
            return _failure(f"cannot serve metrics on port {settings.metrics_port}: {exc}")
        print(f"{PROG}: Prometheus metrics on :{port}/metrics")
    try:
        with logging_redirect_tqdm():
            counts = loop.run()
    except SpoolError as exc:
        return _failure(f"stream stopped: {exc}")
    return _summary(counts, source, settings.out)


def _rate_record(coder: BudgetedCoder, encoded: EncodedFrame) -> dict[str, Any]:
    """What MFIBA decided for the frame just built; feeds its real size back to the controller."""
    decision, frame_bytes = encoded.rate_decision, encoded.frame_bytes
    assert decision is not None
    importance, result = decision.importance, decision.control
    coder.observe_frame(frame_bytes)
    if not result.allocation.feasible and coder.infeasible_frames == 1:
        log.warning("budget %s is below what codec %s needs at its lowest rates (%.0f bits for this frame); "
                    "frames go out at those rates, see 'rate' in the results", coder.budget.text,
                    coder.controller.codec.name, result.frame_bits_estimate)
    return {"budget_bits": result.budget_bits, "frame_bits": 8 * frame_bytes,
            "error": (8 * frame_bytes - result.budget_bits) / result.budget_bits, "weights": importance.weights,
            "mfip": importance.mode, "phi": result.phi, "planned_bits": result.planned_bits,
            "passes": result.passes, "feasible": result.allocation.feasible}


def _frame_line(row: dict[str, Any]) -> str:
    if "dropped" in row:
        return f"{row['image']}: DROPPED: {row['dropped']}"
    head = (f"{row['image']}: {row['frame_bytes']:,} B "
            f"({row['raw_feature_bytes'] / max(row['frame_bytes'], 1):.1f}x under fp32), "
            f"round trip {row['stage_ms']['round_trip']:.0f} ms")
    result = row["result"]
    if result.get("error"):
        return f"{head}: ERROR {result['error']['code']}: {result['error']['message']}"
    found = ", ".join(f"{task} {len(result[task])}" for task in TASKS if task in result)
    return f"{head}: {found or 'no results'}"


def _summary(counts: StreamCounts, source: Source, out_path: Path | None) -> int:
    skipped = [*source.skipped, *counts.not_encoded]
    for _, reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    done = counts.answered
    line = (f"{PROG}: {done} frame(s) answered ({counts.ok} ok, {counts.failed} failed), {counts.dropped} dropped, "
            f"{len(skipped)} image(s) skipped")
    if done:
        line += (f"; mean {counts.bytes / done:,.0f} B/frame ({counts.raw / max(counts.bytes, 1):.1f}x "
                 f"under fp32), mean round trip {counts.round_trip_ms / done:.0f} ms")
    if out_path is not None:
        line += f"; results in {out_path}"
    print(line)
    if counts.ok == 0:
        return _failure("every frame failed in the cloud" if done else "no image could be read and sent")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
