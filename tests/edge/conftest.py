"""Edge test fixtures: PNG folders and a loopback gRPC test peer for the client.

``EchoServicer`` is a test peer for the client's transport behaviour (ordering, size caps,
retries, errors), built on the generated ``FeatureLinkServicer``: it answers each frame with its id
and byte count, never decodes a feature, and is no stand-in for the real cloud.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from media import write_video
from PIL import Image

from fpnlink.edge.client import DEFAULT_MAX_FRAME_BYTES, SERVICE_NAME
from fpnlink.shared.codec import ScaleRecord, make_codec
from fpnlink.shared.wire import TASK_TO_PB, FrameHeader, build_frame, pb, pb_grpc

PEER_FINGERPRINT = "feedfacefeedface"
CLOUD_STAGE_MS = {"decode": 1.0, "heads": 2.0, "total": 4.0}


class EchoServicer(pb_grpc.FeatureLinkServicer):
    """Answers frames with their id and size; behaviour switches are plain attributes.

    Attributes:
        reverse: answer a stream's frames only after the client half-closes, last frame first.
        fail_ids: frame ids answered with ``Result.error`` set (the stream goes on).
        unavailable_first: fail this many Analyze calls with UNAVAILABLE before answering.
        abort_after: abort a stream with RESOURCE_EXHAUSTED after answering this many frames.
        skip_ids: frame ids never answered (a protocol violation the client must notice).
        received: frame ids seen by Stream; analyze_calls: frame ids seen by Analyze.
    """

    def __init__(self, model_fingerprint: str = PEER_FINGERPRINT, min_size: int = 128, max_size: int = 128) -> None:
        self.model_fingerprint = model_fingerprint
        self.min_size, self.max_size = min_size, max_size
        self.tasks = ["detect", "segment"]
        self.codecs = {name: make_codec(name) for name in ("raw", "quant")}
        self.max_frame_bytes = DEFAULT_MAX_FRAME_BYTES
        self.reverse = False
        self.fail_ids: set[int] = set()
        self.unavailable_first = 0
        self.abort_after: int | None = None
        self.skip_ids: set[int] = set()
        self.received: list[int] = []
        self.analyze_calls: list[int] = []

    def GetCapabilities(self, request, context):
        return pb.Capabilities(
            weights="random:0", trained=False, max_frame_bytes=self.max_frame_bytes,
            min_size=self.min_size, max_size=self.max_size,
            tasks=[TASK_TO_PB[t] for t in self.tasks],
            models=[pb.ModelInfo(arch=t, task=TASK_TO_PB[t], backbone_fingerprint=self.model_fingerprint)
                    for t in self.tasks],
            codecs=[pb.CodecInfo(name=name, fingerprint=codec.fingerprint, lossless=codec.lossless)
                    for name, codec in self.codecs.items()],
        )

    def Analyze(self, request, context):
        self.analyze_calls.append(request.frame_id)
        if len(self.analyze_calls) <= self.unavailable_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return self._answer(request)

    def Stream(self, request_iterator, context):
        held = []
        for count, frame in enumerate(request_iterator, start=1):
            self.received.append(frame.frame_id)
            if self.reverse:
                held.append(frame)
            elif frame.frame_id not in self.skip_ids:
                yield self._answer(frame)
            if self.abort_after is not None and count >= self.abort_after:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "test peer gives up")
        for frame in reversed(held):
            yield self._answer(frame)

    def _answer(self, frame: pb.FeatureFrame) -> pb.Result:
        result = pb.Result(stream_id=frame.stream_id, frame_id=frame.frame_id, frame_bytes=frame.ByteSize(),
                           stage_ms=CLOUD_STAGE_MS)
        if frame.frame_id in self.fail_ids:
            result.error.CopyFrom(pb.Error(code="INVALID_ARGUMENT", message=f"frame {frame.frame_id} is bad"))
            return result
        for task in frame.tasks:
            result.results.add(task=task).detections.add(box=[1, 2, 3, 4], label=1, category="class1", score=0.5)
        return result


@pytest.fixture
def peer() -> Iterator[tuple[EchoServicer, str, health.HealthServicer]]:
    """A running test peer on loopback: ``(servicer, target, health servicer)``."""
    servicer = EchoServicer()
    server, target, health_servicer = _serve(servicer)
    try:
        yield servicer, target, health_servicer
    finally:
        server.stop(grace=None)


def _serve(servicer: EchoServicer, health_service: str | None = SERVICE_NAME,
           ) -> tuple[grpc.Server, str, health.HealthServicer]:
    limits = [("grpc.max_send_message_length", DEFAULT_MAX_FRAME_BYTES),
              ("grpc.max_receive_message_length", DEFAULT_MAX_FRAME_BYTES)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=limits)
    pb_grpc.add_FeatureLinkServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    if health_service is not None:  # the overall status "" is SERVING from the start
        health_servicer.set(health_service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}", health_servicer


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Start a servicer (a fresh EchoServicer by default) on loopback and return its target."""
    servers = []

    def start(servicer: EchoServicer | None = None, health_service: str | None = SERVICE_NAME) -> str:
        server, target, _ = _serve(servicer or EchoServicer(), health_service)
        servers.append(server)
        return target

    yield start
    for server in servers:
        server.stop(grace=None)


@pytest.fixture
def closed_target() -> str:
    """A loopback address nothing listens on."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    server.stop(grace=None).wait()
    return f"127.0.0.1:{port}"


@pytest.fixture
def make_frame() -> Callable[..., pb.FeatureFrame]:
    """Build a frame whose one scale carries ``payload_bytes`` opaque bytes (the peer decodes nothing)."""

    def build(frame_id: int, payload_bytes: int = 16, model_fingerprint: str = PEER_FINGERPRINT,
              codec: str = "raw", codec_fingerprint: str | None = None, tasks: tuple[str, ...] = ("detect",),
              ) -> pb.FeatureFrame:
        header = FrameHeader(
            stream_id="test", frame_id=frame_id, capture_time_us=0, original_size=(96, 128), input_size=(96, 128),
            model_fingerprint=model_fingerprint, tasks=list(tasks), codec=codec,
            codec_fingerprint=make_codec(codec).fingerprint if codec_fingerprint is None else codec_fingerprint,
        )
        return build_frame(header, [ScaleRecord("0", (1, 1, 1), "float32", 0.0, b"\x01" * payload_bytes)])

    return build


def write_image(path: Path, height: int = 96, width: int = 128, seed: int = 0, mode: str = "RGB") -> np.ndarray:
    """Write a random image (format from the suffix) and return its RGB uint8 pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    with Image.open(path) as written:
        return np.array(written.convert("RGB"))


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """``a.png``, ``b.png`` and ``notes.txt`` in a folder; ``sub/c.png`` below it."""
    folder = tmp_path / "images"
    write_image(folder / "b.png", seed=2)
    write_image(folder / "a.png", seed=1)
    write_image(folder / "sub" / "c.png", seed=3)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def write_png() -> Callable[..., np.ndarray]:
    """:func:`write_image` for tests that write their own files."""
    return write_image


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    """A 12-frame, 10 fps video (see :func:`write_video`)."""
    return write_video(tmp_path / "clip.mp4")


@pytest.fixture
def make_video() -> Callable[..., Path]:
    """:func:`write_video` for tests that write their own videos."""
    return write_video


@pytest.fixture(autouse=True)
def own_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every edge test gets its own spool file (the default one is per machine)."""
    path = tmp_path / "spool" / "edge-spool.sqlite"
    monkeypatch.setenv("FPNLINK_EDGE_SPOOL", str(path))
    return path
