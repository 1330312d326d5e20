"""The results store's tables (SQLAlchemy Core); Alembic migrations create them (``migrations/``).

One row per frame in ``frames`` (unique per ``(stream_id, frame_id)``), its transmitted scales in ``scales``,
and every task's detections in ``detections`` (masks as COCO RLE). Times are microseconds since the Unix epoch.
``device_id`` is the identity of the device that sent the frame (from its client certificate); NULL until
a transport supplies it.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
    UniqueConstraint,
)

ID = BigInteger().with_variant(Integer(), "sqlite")
"""Row ids: 64-bit on PostgreSQL; SQLite auto-increments only an ``INTEGER PRIMARY KEY``."""

metadata = MetaData()

frames = Table(
    "frames", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("stream_id", String(256), nullable=False),
    Column("frame_id", BigInteger, nullable=False),
    Column("device_id", String(256), nullable=True),
    Column("capture_time_us", BigInteger, nullable=False),
    Column("receive_time_us", BigInteger, nullable=False),
    Column("complete_time_us", BigInteger, nullable=False),
    Column("frame_bytes", BigInteger, nullable=False),
    Column("codec", String(64), nullable=False),
    Column("codec_fingerprint", String(64), nullable=False),
    Column("model_fingerprint", String(64), nullable=False),
    Column("tasks", String(64), nullable=False),
    Column("trained", Boolean, nullable=False),
    Column("stage_ms", JSON, nullable=False),
    Column("detection_count", Integer, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    UniqueConstraint("stream_id", "frame_id", name="uq_frames_stream_frame"),
    Index("ix_frames_stream_capture", "stream_id", "capture_time_us", "id"),
    Index("ix_frames_receive_time", "receive_time_us"),
)

scales = Table(
    "scales", metadata,
    Column("frame_pk", ID, ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(8), primary_key=True),
    Column("phi", Float, nullable=False),
    Column("planned_bits", BigInteger, nullable=False),
    Column("payload_bytes", BigInteger, nullable=False),
)

detections = Table(
    "detections", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("frame_pk", ID, ForeignKey("frames.id", ondelete="CASCADE"), nullable=False),
    Column("task", String(16), nullable=False),
    Column("position", Integer, nullable=False),
    Column("label", Integer, nullable=False),
    Column("category", String(128), nullable=False),
    Column("score", Float, nullable=False),
    Column("x1", Float, nullable=False),
    Column("y1", Float, nullable=False),
    Column("x2", Float, nullable=False),
    Column("y2", Float, nullable=False),
    Column("mask_height", Integer, nullable=True),
    Column("mask_width", Integer, nullable=True),
    Column("mask_counts", LargeBinary, nullable=True),
    Column("keypoints", JSON, nullable=True),
    Column("keypoint_scores", JSON, nullable=True),
    Index("ix_detections_frame", "frame_pk"),
    Index("ix_detections_category", "category"),
)
