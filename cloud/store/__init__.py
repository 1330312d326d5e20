"""The cloud's results store: every answered frame kept in SQL (SQLite by default, PostgreSQL by URL).

=================  ===========================================================================
module             what
=================  ===========================================================================
``schema``         tables: ``frames`` (unique stream_id + frame_id), ``scales``, ``detections``
``database``       URLs, SQLite WAL pragmas, Alembic migrations (``migrations/``)
``records``        :class:`FrameRecord` and its rows; a stored Result rebuilt from rows
``store``          :class:`ResultStore`: batched writes, resend lookups, retention, ping
``writer``         :class:`StoreWriter`: bounded queue, one writer thread, commit futures
``queries``        :class:`Analytics`: streams, frames, one frame, aggregates (for ``/v1``)
``cursor``         opaque keyset cursors
``feed``           :class:`ResultFeed`: committed frames to live subscribers (server-sent events)
=================  ===========================================================================
"""

from .errors import StoreFullError, StoreUnavailableError
from .feed import ResultFeed
from .queries import Analytics, Bucket, FrameDetail, FrameSummary, Page, StreamSummary, TimeWindow
from .records import FrameRecord, ScaleRow, frame_record
from .store import ResultStore
from .writer import Retention, StoreWriter

__all__ = [
    "Analytics", "Bucket", "FrameDetail", "FrameRecord", "FrameSummary", "Page", "ResultFeed", "ResultStore",
    "Retention", "ScaleRow", "StoreFullError", "StoreUnavailableError", "StoreWriter", "StreamSummary",
    "TimeWindow", "frame_record",
]
