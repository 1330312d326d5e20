"""Edge settings: environment variables ``FPNLINK_EDGE_*``, overridden by command-line flags.

Library code never reads these: :mod:`fpnlink.edge.cli` builds one :class:`EdgeSettings` and passes
plain values down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..shared.codec import DEFAULT_LEARNED_CODEC, FeatureCodec, available_codecs, codec_has_weights, make_codec
from ..shared.errors import WeightsError
from ..shared.mfiba import parse_budget, parse_mfip_mode, shipped_profiles
from ..shared.model import TASKS
from ..shared.wire.convert import MAX_ID_LENGTH
from .client import DEFAULT_MAX_FRAME_BYTES
from .operating_point import DEFAULT_MFIP
from .rate import parse_max_kbps
from .spool import DEFAULT_LIVE_WINDOW_S, DEFAULT_QUOTA_BYTES, DEFAULT_TTL_S, FullPolicy


class EdgeSettings(BaseSettings):
    """What one ``fpnlink-edge run`` uses.

    Attributes:
        server: ``host:port`` of the cloud's gRPC endpoint.
        weights: ``synthetic`` (default), ``coco``, ``random:SEED`` or a checkpoint path; must match the cloud's.
        tasks: tasks asked of the cloud, comma-separated in the environment (``FPNLINK_EDGE_TASKS=detect,segment``).
        codec: a registered codec name (default: the cross-scale learned codec).
        codec_checkpoint: weights file of a codec that loads one (``learned``); its shipped default when
            unset. The cloud must serve the same file.
        phi: rate parameter for every scale (fixed rate; excludes ``budget``).
        budget: frame budget (``0.05bpp``, ``30KB``, ``2Mbps@10fps``): MFIBA picks phi per scale and frame.
            With neither set: ``operating_point.DEFAULT_BUDGET`` where a profile is at hand, else the
            codec's default phi.
        mfip: how scale importance is found under a budget: ``full``, ``fast``, ``uniform``, ``fixed:w2,w3,w4,w5``.
        profile: MFIBA profile from ``fpnlink mfiba calibrate`` for this codec and backbone; the one shipped
            for them when unset.
        min_size, max_size: network-input resize; the cloud's (from its capabilities) when unset.
        out: JSON Lines results file; none written when unset.
        threads: torch intra-op threads; torch's default when unset.
        stream_id: stamped on every frame; when unset, the spool's (made unique once, then kept).
        recursive: read images in subfolders of a folder source.
        max_frame_bytes: largest message sent or received.
        connect_timeout_s: how long to wait for the cloud to be SERVING.
        every, fps: keep every N-th source frame; deliver at most ``fps`` frames per second.
        spool: the store-and-forward spool file (``default_spool_path()`` when unset); it keeps the stream id.
        spool_quota_bytes, spool_ttl_s: most frame bytes spooled; age at which an unsent frame is dropped.
        spool_full: what a full spool drops: ``drop-oldest`` or ``refuse-new`` (live sources; a replayable
            source waits for room instead).
        live_window_s: frames spooled this recently go out before the backlog.
        window: frames in flight on the link; frame_timeout_s: per-frame deadline before reconnecting.
        max_backoff_s: longest wait between reconnect attempts (exponential, full jitter).
        backend: the front half on ``torch`` or ``onnxruntime``; onnx: the exported model for the latter
            (exported next to the spool when unset).
        max_kbps: link-adaptive rate: ``R`` (kbps), ``auto`` or ``auto:R``; MFIBA's per-frame budget becomes the
            rate over the source's frame rate (needs a profile; excludes ``budget`` and ``phi``).
        metrics_port: serve Prometheus metrics on this port (0: any free one).
        tls_ca: PEM CA that signed the cloud's certificate; TLS when set.
        tls_cert, tls_key: this device's PEM client certificate and key (mutual TLS); the certificate's
            common name is the device identity, and the default stream id starts with it.
        token: bearer token with scope ``ingest`` (prefer ``FPNLINK_EDGE_TOKEN`` to the flag, which ``ps``
            shows).
    """

    model_config = SettingsConfigDict(env_prefix="FPNLINK_EDGE_", extra="forbid")

    server: str = "localhost:50051"
    weights: str = "synthetic"
    tasks: Annotated[list[str], NoDecode] = ["detect"]
    codec: str = DEFAULT_LEARNED_CODEC
    codec_checkpoint: Path | None = None
    phi: float | None = None
    budget: str | None = None
    mfip: str = DEFAULT_MFIP
    profile: Path | None = None
    min_size: int | None = Field(None, ge=32, le=4096)
    max_size: int | None = Field(None, ge=32, le=4096)
    out: Path | None = None
    threads: int | None = Field(None, ge=1)
    stream_id: str | None = Field(None, max_length=MAX_ID_LENGTH)
    recursive: bool = False
    max_frame_bytes: int = Field(DEFAULT_MAX_FRAME_BYTES, ge=1024)
    connect_timeout_s: float = Field(10.0, gt=0)
    every: int = Field(1, ge=1)
    fps: float | None = Field(None, gt=0)
    spool: Path | None = None
    spool_quota_bytes: int = Field(DEFAULT_QUOTA_BYTES, ge=1024)
    spool_ttl_s: float = Field(DEFAULT_TTL_S, gt=0)
    spool_full: FullPolicy = "drop-oldest"
    live_window_s: float = Field(DEFAULT_LIVE_WINDOW_S, ge=0)
    window: int = Field(4, ge=1, le=64)
    frame_timeout_s: float = Field(60.0, gt=0)
    max_backoff_s: float = Field(5.0, gt=0)
    backend: Literal["torch", "onnxruntime"] = "torch"
    max_kbps: str | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)
    onnx: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = Field(None, repr=False, min_length=1)

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in TASKS]
        if unknown or not value:
            raise ValueError(f"tasks must be a comma-separated subset of {','.join(TASKS)}; got {value}")
        return list(dict.fromkeys(value))

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        if value not in available_codecs():
            raise ValueError(f"unknown codec {value!r}; choose one of {available_codecs()}")
        return value

    @field_validator("budget")
    @classmethod
    def _parse_budget(cls, value: str | None) -> str | None:
        if value is not None:
            parse_budget(value)
        return value

    @field_validator("mfip")
    @classmethod
    def _parse_mfip(cls, value: str) -> str:
        return str(parse_mfip_mode(value))

    @model_validator(mode="after")
    def _consistent(self) -> EdgeSettings:
        if self.codec_checkpoint is not None:
            if not codec_has_weights(self.codec):
                raise ValueError(f"codec_checkpoint is given but codec {self.codec!r} loads no weights")
            if not self.codec_checkpoint.is_file():
                raise ValueError(f"codec_checkpoint {self.codec_checkpoint} is not a file")
        if self.phi is not None:
            try:
                self.build_codec().check_phi(self.phi)
            except WeightsError as exc:
                raise ValueError(str(exc)) from exc
        if self.budget is not None and self.phi is not None:
            raise ValueError("give either phi (fixed rate) or budget (MFIBA rate control), not both")
        if self.max_kbps is not None:
            parse_max_kbps(self.max_kbps)
            if self.budget is not None or self.phi is not None:
                raise ValueError("max_kbps sets the budget itself: drop budget and phi")
        budgeted = "max_kbps" if self.max_kbps is not None else "a budget" if self.budget is not None else None
        if budgeted and self.profile is None and self.codec not in {p.codec.name for p in shipped_profiles()}:
            raise ValueError(f"{budgeted} needs an MFIBA profile and none ships for codec {self.codec}: give "
                             "--profile (from `fpnlink mfiba calibrate`)")
        if self.profile is not None and not self.profile.is_file():
            raise ValueError(f"profile {self.profile} is not a file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (mutual TLS): give both or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("a client certificate needs tls_ca, the CA that signed the cloud's certificate")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a file")
        if self.onnx is not None and self.backend != "onnxruntime":
            raise ValueError("onnx is the model of --backend onnxruntime; give that backend or drop onnx")
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} exceeds max_size {self.max_size}")
        return self

    def build_codec(self) -> FeatureCodec:
        """The configured codec (weights from ``codec_checkpoint`` where it has some)."""
        return make_codec(self.codec, self.codec_checkpoint)
