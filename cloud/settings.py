"""The cloud's settings: the only place it reads environment variables (prefix ``FPNLINK_CLOUD_``).

Every field is also an argument of :class:`CloudSettings`, and ``fpnlink-cloud serve`` flags override the
environment. Library code receives plain values from here and never reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fpnlink.shared.codec import available_codecs, codec_has_weights
from fpnlink.shared.model import ModelConfig

from .store.database import normalize_url

MiB = 1024 * 1024
MAX_GRPC_MESSAGE = 2**31 - 1
"""gRPC message-size options are 32-bit signed integers."""
MAX_WORKERS = 64


class CloudSettings(BaseSettings):
    """Settings of one cloud process (gRPC + REST over one engine).

    Attributes:
        host: interface both servers bind (``0.0.0.0`` in containers).
        grpc_port, http_port: 0 binds an ephemeral port (tests); the bound ports are reported back.
        weights: ``random:SEED`` (untrained), ``coco``, ``synthetic`` or a checkpoint path.
        min_size, max_size, detections_per_img, score_thresh: model settings (see ``ModelConfig``); the edge
            must resize with the same min/max size, which the backbone fingerprint checks.
        device: torch device of the heads, e.g. ``cpu`` or ``cuda``.
        codecs: codec names served; every registered codec when omitted.
        codec_checkpoint: weights file of the served codecs that load one (``learned``); their shipped
            defaults when omitted. It must hold for the same backbone weights.
        max_frame_bytes: cap on a serialized frame, gRPC message size limits included.
        max_upload_bytes, max_image_pixels: caps on ``POST /v1/analyze`` uploads.
        threads: torch intra-op threads, set for the whole process by ``fpnlink-cloud serve``, which fills
            them in with ``workers`` (:meth:`for_process`); an embedded service never changes them.
        workers: engine threads (batches run at once); 1 in an embedded service when omitted.
        max_batch_size: most frames (of one task set and input size) decoded and run together; when omitted,
            :meth:`batch_size` picks it by device.
        max_queue_delay_ms: longest a frame waits for others of its kind once a worker is free.
        max_queue: frames of all streams waiting for a batch; beyond it RESOURCE_EXHAUSTED with a retry hint.
        queue_deadline_s: longest a frame may wait in the queue before DEADLINE_EXCEEDED.
        stream_in_flight: frames of one ``Stream`` call in flight at once (read ahead, answered as they finish).
        max_concurrent_rpcs: gRPC calls in flight (a stream counts once) before RESOURCE_EXHAUSTED.
        cache_size: recent results kept for resent frames.
        warmup: run every model once before reporting ready.
        grace_s: seconds in-flight requests get at shutdown.
        tls_cert, tls_key: PEM server certificate chain and key; gRPC and REST serve TLS when set.
        tls_client_ca: PEM CA bundle; gRPC then requires client certificates it signed (mutual TLS), and
            the certificate's common name is the device identity (it may write only its own streams).
        token_file: bearer-token hashes and scopes (see :mod:`.tokens`); without one every call is allowed.
        health_port: a plaintext gRPC port serving only ``grpc.health.v1`` (Kubernetes gRPC probes cannot do
            TLS); none when omitted.
        max_connection_age_s: gRPC connections are closed (GOAWAY, in-flight calls get ``grace_s``) after this
            long, so that long-lived streams rebalance over replicas; never when omitted.
        store: keep every answered frame in the results store (``/v1/streams`` analytics, resends after a
            restart); off serves frames without any record.
        database_url: ``sqlite:///PATH`` or ``postgresql://USER@HOST:PORT/DB``; ``database_path`` when omitted.
        database_path: the default SQLite file (WAL mode), created with its folder on first start.
        store_queue_size: frames waiting for their commit at most; beyond, frames get UNAVAILABLE.
        store_batch_size: frames per store transaction at most.
        store_timeout_s: database connect timeout, and how long a frame waits for its commit.
        retention_max_age_s, retention_max_frames: frames older (by receive time), or beyond the newest
            ``retention_max_frames``, are pruned; kept forever when both are omitted.
    """

    model_config = SettingsConfigDict(env_prefix="FPNLINK_CLOUD_", extra="forbid")

    host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    http_port: int = Field(8080, ge=0, le=65535)
    weights: str = "random:0"
    min_size: int = Field(800, ge=32, le=4096)
    max_size: int = Field(1333, ge=32, le=4096)
    detections_per_img: int = Field(100, ge=1)
    score_thresh: float = Field(0.05, ge=0.0, le=1.0)
    device: str = "cpu"
    codecs: list[str] | None = None
    codec_checkpoint: Path | None = None
    max_frame_bytes: int = Field(256 * MiB, ge=1024, le=MAX_GRPC_MESSAGE)
    max_upload_bytes: int = Field(32 * MiB, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    threads: int | None = Field(None, ge=1)
    workers: int | None = Field(None, ge=1, le=MAX_WORKERS)
    max_batch_size: int | None = Field(None, ge=1, le=256)
    max_queue_delay_ms: float = Field(5.0, ge=0.0, le=10_000.0)
    max_queue: int = Field(256, ge=1)
    queue_deadline_s: float = Field(30.0, gt=0.0)
    stream_in_flight: int = Field(8, ge=1, le=1024)
    max_concurrent_rpcs: int = Field(64, ge=1)
    cache_size: int = Field(64, ge=0)
    warmup: bool = True
    grace_s: float = Field(5.0, ge=0.0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token_file: Path | None = None
    health_port: int | None = Field(None, ge=0, le=65535)
    max_connection_age_s: float | None = Field(None, gt=0.0)
    store: bool = True
    database_url: str | None = None
    database_path: Path = Path("fpnlink-cloud.db")
    store_queue_size: int = Field(1024, ge=1)
    store_batch_size: int = Field(64, ge=1, le=10_000)
    store_timeout_s: float = Field(5.0, gt=0.0)
    retention_max_age_s: float | None = Field(None, gt=0.0)
    retention_max_frames: int | None = Field(None, ge=1)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str | None) -> str | None:
        if url is not None:
            normalize_url(url)  # ValueError naming the accepted forms
        return url

    @model_validator(mode="after")
    def _consistent(self) -> CloudSettings:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both (TLS) or neither (plaintext)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        if self.codec_checkpoint is not None:
            if not self.codec_checkpoint.is_file():
                raise ValueError(f"codec_checkpoint {self.codec_checkpoint} is not a file")
            served = self.codecs if self.codecs is not None else available_codecs()
            if not any(codec_has_weights(name) for name in served):
                raise ValueError(f"codec_checkpoint is given but none of the served codecs {served} loads weights")
        return self

    def for_process(self, cores: int) -> CloudSettings:
        """These settings with ``workers`` and ``threads`` filled in for a process that owns ``cores`` CPU cores.

        On a CPU device the cores are split so that workers x threads = cores, by default one worker per core at
        one thread each: frames in parallel beat intra-op threads there (four streams of all three tasks at
        256 px, synthetic weights, 2 cores, batches of one: 1.18-1.29 frames/s against 0.84 for one worker at
        two threads, ``fpnlink bench load``). Elsewhere the device does the work: one worker, torch's threads.
        """
        if not cores >= 1:
            raise ValueError(f"cores must be >= 1, got {cores}")
        workers, threads = self.workers, self.threads
        if self.on_cpu:
            if workers is None:
                workers = min(MAX_WORKERS, max(1, cores // (threads or 1)))
            if threads is None:
                threads = max(1, cores // workers)
        return self.model_copy(update={"workers": workers or 1, "threads": threads})

    def batch_size(self) -> int:
        """``max_batch_size``, else 1 on a CPU device and 8 elsewhere.

        On CPU a batch costs more per frame than its frames one by one (2 cores, four streams: batches of up to 8
        gave 0.55-1.13 frames/s against 1.18-1.21 for batches of one, interleaved runs of ``fpnlink bench
        load``), and a large batch leaves the other workers idle.
        """
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 1 if self.on_cpu else 8

    @property
    def on_cpu(self) -> bool:
        """Whether ``device`` is the CPU (``cpu``, ``cpu:0``)."""
        return self.device.split(":")[0] == "cpu"

    def network_config(self) -> ModelConfig:
        """The ModelConfig the weights are built with."""
        return ModelConfig(min_size=self.min_size, max_size=self.max_size,
                           detections_per_img=self.detections_per_img, score_thresh=self.score_thresh)
