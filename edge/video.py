"""Video files, cameras and network streams through PyAV (FFmpeg).

Capture times come from the source: a file's ``creation_time`` tag (its modification time without one)
plus each frame's presentation time; a live stream's frames are stamped when they arrive (FFmpeg does not
expose the sender's wall clock for every protocol). A packet that fails to decode is skipped and recorded,
as a broken image in a folder is; a stream that breaks off ends the source with the frames read so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import av

from ..shared.imageio import to_tensor
from ..shared.wire.convert import MAX_IMAGE_SIDE
from .sources import Source, SourceError, SourceFrame

log = logging.getLogger(__name__)


class VideoSource(Source):
    """Frames of a video file, a camera (``/dev/videoN``, V4L2) or an RTSP/RTMP/HTTP stream.

    Args:
        spec: a file path or a URL / device path.
        live: a camera or stream (never replayed, stamped on arrival) rather than a file.
        max_side: frames with a longer side end the source with a :class:`SourceError` at open.
        every, fps, start: see :class:`Source`.
        open_timeout_s: how long opening and each read may block on a network stream.

    Raises:
        SourceError: at construction, when the file or stream cannot be opened or holds no video.
    """

    def __init__(self, spec: str | Path, live: bool, max_side: int = MAX_IMAGE_SIDE, every: int = 1,
                 fps: float | None = None, start: int = 0, open_timeout_s: float = 10.0) -> None:
        super().__init__(every, fps, start)
        self.spec = str(spec)
        self.replayable = not live
        self.identity = self.spec if live else str(Path(spec).resolve())
        self.label = self.spec if live else Path(spec).name
        self.max_side = max_side
        self.open_timeout_s = open_timeout_s
        container = self._open()  # probe now: a bad path or URL fails before any model is loaded
        try:
            stream = container.streams.video[0]
            self.frame_count = int(stream.frames or 0)
            if max(stream.width or 0, stream.height or 0) > max_side:
                raise SourceError(f"{self.label}: {stream.width}x{stream.height} exceeds {max_side} pixels on a side")
        finally:
            container.close()

    def __len__(self) -> int:
        if not self.replayable or not self.frame_count:
            return 0
        return sum(1 for i in range(self.start, self.frame_count) if i % self.every == 0)

    def _open(self) -> Any:
        options = {"rtsp_transport": "tcp"} if self.spec.startswith(("rtsp://", "rtsps://")) else {}
        kind = {"format": "v4l2"} if self.spec.startswith("/dev/video") else {}
        try:
            container = av.open(self.spec, options=options, timeout=self.open_timeout_s, **kind)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"cannot open video source {self.spec!r}: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.spec!r} holds no video stream")
        return container

    def _start_time_us(self, container: Any) -> int:
        """A file's wall-clock origin: its ``creation_time`` tag, else its modification time."""
        tag = container.metadata.get("creation_time")
        if tag:
            try:
                return int(datetime.fromisoformat(tag.replace("Z", "+00:00")).timestamp() * 1_000_000)
            except ValueError:
                log.warning("%s: creation_time %r is not ISO 8601; using the file's modification time", self.label, tag)
        return Path(self.spec).stat().st_mtime_ns // 1000

    def _frames(self) -> Iterator[SourceFrame]:
        container = self._open()
        try:
            origin = None if not self.replayable else self._start_time_us(container)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = 0
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.FFmpegError as exc:
                    name = f"{self.label}#{index:06d}"
                    log.warning("skipped %s: undecodable packet: %s", name, exc)
                    self.skipped.append((name, f"{name}: undecodable packet ({exc})"))
                    continue
                for frame in decoded:
                    if index >= self.start and index % self.every == 0:
                        if origin is None or frame.time is None:
                            captured = time.time_ns() // 1000
                        else:
                            captured = origin + int(round(frame.time * 1_000_000))
                        image = to_tensor(frame.to_ndarray(format="rgb24"))
                        yield SourceFrame(f"{self.label}#{index:06d}", image, captured, index)
                    index += 1
        except av.FFmpegError as exc:
            log.warning("%s: the stream broke off after %d frame(s): %s", self.label, index, exc)
            self.skipped.append((f"{self.label}#{index:06d}", f"{self.label}: stream broke off ({exc})"))
        finally:
            container.close()
