"""The results store's write and lookup side: batched inserts, resend lookups, retention, liveness.

Every method is synchronous and thread-safe (one pooled SQLAlchemy engine); the cloud calls them from worker
threads (:class:`~fpnlink.cloud.store.writer.StoreWriter` for writes), never from its event loop. Database
failures surface as :class:`StoreUnavailableError`, which transports answer with UNAVAILABLE / 503.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fpnlink.shared.wire import pb

from .database import connect, migrate
from .errors import StoreUnavailableError
from .records import FrameRecord, detection_rows, frame_row, result_from_rows, scale_rows
from .schema import detections, frames, scales

logger = logging.getLogger(__name__)

WRITE_ATTEMPTS = 2
"""A batch that hits the unique key (another replica stored a frame meanwhile) is re-checked once."""


class ResultStore:
    """Frames, scales and detections in one SQL database (SQLite file or PostgreSQL).

    Args:
        url: ``sqlite:///PATH`` or ``postgresql://...`` (see :func:`~fpnlink.cloud.store.database.connect`).
        timeout_s: connect timeout and lock wait.

    Construction connects nothing; :meth:`open` migrates the schema to the head revision.
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.engine = connect(url, timeout_s)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def open(self) -> None:
        """Create or upgrade the schema (Alembic); :class:`StoreUnavailableError` when unreachable."""
        with store_errors("migrate the results database"):
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """One round trip; :class:`StoreUnavailableError` when the database does not answer."""
        with store_errors("reach the results database"), self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    # ------------------------------------------------------------------------------------------- writes

    def write(self, records: Sequence[FrameRecord]) -> None:
        """Store ``records`` in one transaction.

        A frame already stored with a result is kept as it is (a resend); a stored failure is replaced by the
        new record. Within ``records`` the last record of a key wins.
        """
        latest = {record.key: record for record in records}
        with store_errors("write to the results database"):
            for attempt in range(WRITE_ATTEMPTS):
                try:
                    with self.engine.begin() as connection:
                        self._write(connection, list(latest.values()))
                    return
                except IntegrityError:
                    if attempt + 1 == WRITE_ATTEMPTS:
                        raise
                    logger.info("a frame of this batch was stored concurrently; re-checking the batch")

    @staticmethod
    def _write(connection: sa.Connection, records: list[FrameRecord]) -> None:
        keys = [record.key for record in records]
        existing = {(row.stream_id, row.frame_id): row for row in connection.execute(
            sa.select(frames.c.id, frames.c.stream_id, frames.c.frame_id, frames.c.error_code)
            .where(sa.tuple_(frames.c.stream_id, frames.c.frame_id).in_(keys)))}
        replaced = [row.id for row in existing.values() if row.error_code is not None]
        if replaced:
            connection.execute(sa.delete(frames).where(frames.c.id.in_(replaced)))
        new = [r for r in records if r.key not in existing or existing[r.key].error_code is not None]
        if not new:
            return
        inserted = connection.execute(
            sa.insert(frames).returning(frames.c.id, sort_by_parameter_order=True), [frame_row(r) for r in new])
        pks = [row.id for row in inserted]
        scale_values = [row for record, pk in zip(new, pks) for row in scale_rows(record, pk)]
        detection_values = [row for record, pk in zip(new, pks) for row in detection_rows(record, pk)]
        if scale_values:
            connection.execute(sa.insert(scales), scale_values)
        if detection_values:
            connection.execute(sa.insert(detections), detection_values)

    # ------------------------------------------------------------------------------------------- reads

    def lookup(self, stream_id: str, frame_id: int) -> pb.Result | None:
        """The stored Result of a frame answered OK before, or None (never stored, or stored as a failure)."""
        with store_errors("read the results database"), self.engine.connect() as connection:
            frame = connection.execute(sa.select(frames).where(
                frames.c.stream_id == stream_id, frames.c.frame_id == frame_id,
                frames.c.error_code.is_(None))).mappings().first()
            if frame is None:
                return None
            rows = connection.execute(sa.select(detections).where(detections.c.frame_pk == frame["id"])).mappings()
            return result_from_rows(frame, list(rows))

    def count(self) -> int:
        """Frames stored."""
        with store_errors("read the results database"), self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(frames)).scalar_one()

    # ------------------------------------------------------------------------------------------ retention

    def prune(self, *, now_us: int, max_age_s: float | None = None, max_frames: int | None = None) -> int:
        """Delete frames received more than ``max_age_s`` before ``now_us``, then all but the newest
        ``max_frames``; returns how many frames were deleted (their scales and detections go with them)."""
        deleted = 0
        with store_errors("prune the results database"), self.engine.begin() as connection:
            if max_age_s is not None:
                cutoff = now_us - int(max_age_s * 1e6)
                deleted += connection.execute(sa.delete(frames).where(frames.c.receive_time_us < cutoff)).rowcount
            if max_frames is not None:
                oldest_kept = connection.execute(
                    sa.select(frames.c.id).order_by(frames.c.id.desc()).offset(max_frames - 1).limit(1)).scalar()
                if oldest_kept is not None:
                    deleted += connection.execute(sa.delete(frames).where(frames.c.id < oldest_kept)).rowcount
        return deleted


@contextlib.contextmanager
def store_errors(action: str) -> Iterator[None]:
    """A database failure inside becomes :class:`StoreUnavailableError` naming what was attempted."""
    try:
        yield
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StoreUnavailableError(f"cannot {action}: {detail}") from exc
