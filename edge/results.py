"""``results.jsonl``: exactly one line per frame, however often the frame was sent.

Each line is a JSON object with at least ``image``, ``stream_id`` and ``frame_id``; answered frames add
``result`` (the cloud's answer), dropped ones ``dropped`` (why the spool let it go). A line is flushed and
fsynced before the spool forgets its frame, so after a crash the file may know a frame the spool still
holds; :meth:`ResultLog.open` reads the file back, cuts a half-written last line, and reports which frames
are answered so the spool acknowledges them instead of sending them again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

FrameKey = tuple[str, int]
"""``(stream_id, frame_id)``: what makes a frame unique."""


class ResultLog:
    """Appends one line per frame to a JSON Lines file (or keeps the keys only, without a file).

    Args:
        path: the file; None keeps no file but still refuses duplicates.
        resume: keep the lines already there (an interrupted run goes on); otherwise start the file empty.

    Attributes:
        written: keys of every frame with a line.
    """

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path = path
        self.written: set[FrameKey] = set()
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume and path.is_file():
            self._recover(path)
            self._file = path.open("a", encoding="utf-8")
        else:
            self._file = path.open("w", encoding="utf-8")

    def _recover(self, path: Path) -> None:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: cutting a half-written last line (%d bytes) left by an interrupted run", path,
                        len(data) - end)
            with path.open("r+b") as file:
                file.truncate(end)
        for number, line in enumerate(data[:end].splitlines(), start=1):
            try:
                row = json.loads(line)
                self.written.add((str(row["stream_id"]), int(row["frame_id"])))
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d is not a results line of this edge; kept as is", path, number)

    def write(self, row: dict[str, Any]) -> bool:
        """Append ``row`` unless its frame has a line already; True when it was written."""
        key = (str(row["stream_id"]), int(row["frame_id"]))
        with self._lock:
            if key in self.written:
                return False
            if self._file is not None:
                self._file.write(json.dumps(row) + "\n")
                self._file.flush()
                os.fsync(self._file.fileno())
            self.written.add(key)
            return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
