"""Results store: frames, scales, detections.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "frames",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("stream_id", sa.String(256), nullable=False),
        sa.Column("frame_id", sa.BigInteger, nullable=False),
        sa.Column("device_id", sa.String(256), nullable=True),
        sa.Column("capture_time_us", sa.BigInteger, nullable=False),
        sa.Column("receive_time_us", sa.BigInteger, nullable=False),
        sa.Column("complete_time_us", sa.BigInteger, nullable=False),
        sa.Column("frame_bytes", sa.BigInteger, nullable=False),
        sa.Column("codec", sa.String(64), nullable=False),
        sa.Column("codec_fingerprint", sa.String(64), nullable=False),
        sa.Column("model_fingerprint", sa.String(64), nullable=False),
        sa.Column("tasks", sa.String(64), nullable=False),
        sa.Column("trained", sa.Boolean, nullable=False),
        sa.Column("stage_ms", sa.JSON, nullable=False),
        sa.Column("detection_count", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.UniqueConstraint("stream_id", "frame_id", name="uq_frames_stream_frame"),
    )
    op.create_index("ix_frames_stream_capture", "frames", ["stream_id", "capture_time_us", "id"])
    op.create_index("ix_frames_receive_time", "frames", ["receive_time_us"])
    op.create_table(
        "scales",
        sa.Column("frame_pk", ID, sa.ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(8), primary_key=True),
        sa.Column("phi", sa.Float, nullable=False),
        sa.Column("planned_bits", sa.BigInteger, nullable=False),
        sa.Column("payload_bytes", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "detections",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("frame_pk", ID, sa.ForeignKey("frames.id", ondelete="CASCADE"), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("x1", sa.Float, nullable=False),
        sa.Column("y1", sa.Float, nullable=False),
        sa.Column("x2", sa.Float, nullable=False),
        sa.Column("y2", sa.Float, nullable=False),
        sa.Column("mask_height", sa.Integer, nullable=True),
        sa.Column("mask_width", sa.Integer, nullable=True),
        sa.Column("mask_counts", sa.LargeBinary, nullable=True),
        sa.Column("keypoints", sa.JSON, nullable=True),
        sa.Column("keypoint_scores", sa.JSON, nullable=True),
    )
    op.create_index("ix_detections_frame", "detections", ["frame_pk"])
    op.create_index("ix_detections_category", "detections", ["category"])


def downgrade() -> None:
    op.drop_table("detections")
    op.drop_table("scales")
    op.drop_table("frames")
