"""``fpnlink-cloud serve``: the cloud process's entry point (flags override ``FPNLINK_CLOUD_*`` variables)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import ValidationError

from fpnlink.shared.errors import ConfigError, FpnlinkError

from .service import BundleLoader, CloudService
from .settings import CloudSettings
from .tokens import SCOPES, add_token

logger = logging.getLogger("fpnlink.cloud")

# flag -> settings field; each flag's default is None so that unset flags leave env/defaults alone.
_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("--weights", str, "random:SEED (untrained), coco, synthetic or a checkpoint path"),
    ("--host", str, "interface to bind (0.0.0.0 for all)"),
    ("--grpc-port", int, "gRPC port (0: ephemeral)"),
    ("--http-port", int, "REST/metrics port (0: ephemeral)"),
    ("--min-size", int, "network-input shorter side; the edge must use the same"),
    ("--max-size", int, "network-input longer-side cap; the edge must use the same"),
    ("--detections-per-img", int, "cap on detections per image and task"),
    ("--score-thresh", float, "minimum detection score"),
    ("--device", str, "torch device of the heads (cpu, cuda, cuda:1)"),
    ("--codec-checkpoint", str, "weights of the learned codec (default: the shipped one); same backbone weights"),
    ("--max-frame-bytes", int, "largest serialized frame accepted (gRPC message limit)"),
    ("--max-upload-bytes", int, "largest /v1/analyze upload"),
    ("--threads", int, "torch intra-op threads, set for the whole process (CPU default: cores / workers)"),
    ("--workers", int, "engine worker threads, batches run at once (CPU default: cores / threads; else 1)"),
    ("--max-batch-size", int, "most frames of one task set and input size run as one batch (CPU 1, else 8)"),
    ("--max-queue-delay-ms", float, "longest a frame waits for others of its kind once a worker is free"),
    ("--max-queue", int, "frames of all streams waiting for a batch (beyond: RESOURCE_EXHAUSTED + retry hint)"),
    ("--queue-deadline-s", float, "longest a frame waits in the queue (beyond: DEADLINE_EXCEEDED)"),
    ("--stream-in-flight", int, "frames of one Stream call in flight at once (answered as they finish)"),
    ("--cache-size", int, "recent results kept for resent frames"),
    ("--grace-s", float, "seconds in-flight requests get at shutdown"),
    ("--tls-cert", str, "PEM server certificate chain: gRPC and REST serve TLS (with --tls-key)"),
    ("--tls-key", str, "PEM key of --tls-cert"),
    ("--tls-client-ca", str, "PEM CA of the devices' client certificates: gRPC requires mutual TLS"),
    ("--token-file", str, "bearer-token hashes and scopes (fpnlink-cloud token add writes it)"),
    ("--health-port", int, "plaintext gRPC port with only grpc.health.v1 (Kubernetes probes)"),
    ("--max-connection-age-s", float, "close gRPC connections after this long so streams rebalance"),
    ("--database-url", str, "results store: sqlite:///PATH or postgresql://USER@HOST:PORT/DB"),
    ("--database-path", str, "SQLite file of the results store when no URL is given (default fpnlink-cloud.db)"),
    ("--store-queue-size", int, "frames waiting for their store commit at most (beyond: UNAVAILABLE)"),
    ("--store-batch-size", int, "frames per store transaction at most"),
    ("--store-timeout-s", float, "database connect timeout and commit wait"),
    ("--retention-max-age-s", float, "prune stored frames received longer ago than this"),
    ("--retention-max-frames", int, "keep only the newest this many stored frames"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpnlink-cloud", description="fpnlink cloud: decode features, run heads.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    serve = subparsers.add_parser("serve", help="serve gRPC FeatureLink + REST until SIGINT/SIGTERM",
                                  description="Flags override FPNLINK_CLOUD_* environment variables.")
    for flag, kind, text in _FLAGS:
        serve.add_argument(flag, type=kind, default=None, help=text)
    serve.add_argument("--codecs", default=None, help="comma-separated codec names (default: all registered)")
    serve.add_argument("--no-warmup", dest="warmup", action="store_false", default=None,
                       help="report ready without running each model once first")
    serve.add_argument("--no-store", dest="store", action="store_false", default=None,
                       help="keep no record of frames (no /v1 analytics, no resends from the store)")
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                       help="logging level (default info)")
    token = subparsers.add_parser("token", help="manage the bearer-token file")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    add = token_commands.add_parser("add", help="create a token, store its hash, print the token once")
    add.add_argument("--file", required=True, type=Path, help="token file (created 0600 when missing)")
    add.add_argument("--name", required=True, help="who holds the token (a device, a dashboard)")
    add.add_argument("--scopes", required=True, help=f"comma-separated subset of {','.join(SCOPES)}")
    return parser


def token_add(args: argparse.Namespace) -> int:
    """``fpnlink-cloud token add``: prints the new token on stdout, nothing else."""
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    try:
        print(add_token(args.file, args.name, scopes))
    except ConfigError as exc:
        print(f"fpnlink-cloud: {exc}", file=sys.stderr)
        return 2
    return 0


def settings_from_args(args: argparse.Namespace) -> CloudSettings:
    """Settings from the environment, overridden by every flag that was given."""
    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _, _ in _FLAGS}
    overrides["codecs"] = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs else None
    overrides["warmup"] = args.warmup
    overrides["store"] = args.store
    overrides["log_level"] = args.log_level
    return CloudSettings(**{k: v for k, v in overrides.items() if v is not None})


async def serve(
    settings: CloudSettings,
    *,
    bundle_loader: BundleLoader | None = None,
    on_ready: Callable[[CloudService], None] | None = None,
) -> int:
    """Run until SIGINT or SIGTERM, then shut down gracefully; returns the exit status.

    Args:
        settings: the process settings.
        bundle_loader: overrides how weights are loaded (tests).
        on_ready: called on the event loop once the engine serves (must not block).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = CloudService(settings, bundle_loader=bundle_loader)
    try:
        await service.start()
        ready = asyncio.create_task(service.wait_ready())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and ready.exception() is not None:
            logger.error("cannot serve: %s", ready.exception())
            return 1
        if ready.done() and on_ready is not None:
            on_ready(service)
        await stopped
        ready.cancel()
        logger.info("signal received, shutting down (grace %.1f s)", settings.grace_s)
        return 0
    finally:
        await service.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "token":
        return token_add(args)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"fpnlink-cloud: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.weights.startswith("random"):
        logger.warning("weights %r are random and UNTRAINED: results are labelled trained=false and mean nothing",
                       settings.weights)
    settings = settings.for_process(len(os.sched_getaffinity(0)))
    if settings.threads is not None:  # the process owner sets torch's threads, once, for the whole process
        torch.set_num_threads(settings.threads)
    try:
        return asyncio.run(serve(settings))
    except (FpnlinkError, OSError) as exc:  # e.g. a port already in use
        print(f"fpnlink-cloud: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
