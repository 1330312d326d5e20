"""Frame sources: image folders and files, video files, cameras and RTSP/HTTP streams.

:func:`open_source` turns a ``--source`` string into a :class:`Source`; iterating it yields
:class:`SourceFrame` s (``image`` is float [3, H, W] in [0, 1], RGB, the input
:class:`~fpnlink.edge.agent.EdgeAgent` expects)::

    DIR or image file ──> ImageSource  (one decoder: fpnlink.shared.imageio)  ─┐
    video file        ──> VideoSource  (PyAV, replayable)                      ├─> every-Nth ─> --fps pacing ─> frames
    /dev/videoN, rtsp://, http(s)://, rtmp://  ──> VideoSource (live)         ─┘

A file that cannot be decoded, or that exceeds the wire's size limit, is skipped with a warning and recorded
in :attr:`Source.skipped`, so one bad file never ends a run; a source that cannot be opened at all raises
:class:`SourceError` when it is opened. Replayable sources (folders, files) are finite and deterministic, so
a restarted edge can resume them at a frame index; live sources cannot be replayed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..shared.errors import BadFrameError, FpnlinkError, LimitExceededError
from ..shared.imageio import IMAGE_SUFFIXES, capture_time_us, read_image
from ..shared.wire.convert import MAX_IMAGE_SIDE

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mjpeg", ".h264")
"""File suffixes (case-insensitive) read as video files."""
LIVE_PREFIXES: tuple[str, ...] = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "/dev/video")
"""Sources read as live streams (never replayed)."""

log = logging.getLogger(__name__)


class SourceError(FpnlinkError, ValueError):
    """A source cannot be opened: missing path, no image, bad URL, unreadable video, bad sampling setting."""


@dataclass(frozen=True)
class SourceFrame:
    """One frame from a source.

    Attributes:
        name: the ``image`` field of results: a folder file's relative path, or ``video.mp4#000042``.
        image: [3, H, W] float32 RGB in [0, 1].
        capture_time_us: when it was captured, from the source (EXIF, video timestamps, arrival for live).
        index: position in the source before sampling (0-based); a replayable source resumes at one.
    """

    name: str
    image: Tensor
    capture_time_us: int
    index: int


class Source:
    """Base of the sources: sampling, pacing and the skip record.

    Args:
        every: keep every ``every``-th frame (1: all).
        fps: deliver at most this many frames per second of wall time (None: as fast as consumed). A live
            source drops the frames that arrive between slots; a replayable one waits for the next slot.
        start: skip frames whose index is below this (resuming a replayable source).

    Attributes:
        identity: what the source is (resolved path or URL); a spool resumes only the same identity.
        replayable: the source yields the same frames again when reopened.
        skipped: ``(name, reason)`` for every frame that could not be read, filled while iterating.
    """

    identity: str
    replayable: bool = True

    def __init__(self, every: int = 1, fps: float | None = None, start: int = 0) -> None:
        if every < 1:
            raise SourceError(f"every must be >= 1 (keep every N-th frame), got {every}")
        if fps is not None and not fps > 0:
            raise SourceError(f"fps must be > 0, got {fps}")
        if start < 0:
            raise SourceError(f"start must be >= 0, got {start}")
        self.every, self.fps, self.start = every, fps, start
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        """Frames a finite source will yield after sampling (0 when unknown, as for live streams)."""
        return 0

    def _frames(self) -> Iterator[SourceFrame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[SourceFrame]:
        self.skipped = []
        interval = None if self.fps is None else 1.0 / self.fps
        next_slot = time.monotonic()
        for frame in self._frames():
            if frame.index < self.start or frame.index % self.every:
                continue
            if interval is not None:
                now = time.monotonic()
                if now < next_slot:
                    if not self.replayable:
                        continue  # a live frame that came early: the next one is fresher
                    time.sleep(next_slot - now)
                next_slot = max(next_slot + interval, time.monotonic() - interval)
            yield frame


def list_images(path: str | Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """The image files a source path names, sorted, and the other files beside them.

    Args:
        path: a folder, or one file (taken as an image whatever its suffix).
        recursive: descend into subfolders (hidden files and folders are left out).

    Returns:
        ``(images, ignored)``: files with an :data:`IMAGE_SUFFIXES` suffix, and the remaining files.

    Raises:
        SourceError: the path does not exist, or a folder holds no image file.
    """
    root = Path(path)
    if root.is_file():
        return [root], []
    if not root.is_dir():
        raise SourceError(f"source {str(root)!r} does not exist (give a folder of images, an image or video "
                          f"file, a camera /dev/videoN or an rtsp:// or http:// URL)")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p for p in root.glob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        hint = "" if recursive else "; images in subfolders are read only when recursive (--recursive)"
        raise SourceError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {str(root)!r}{hint}")
    return images, ignored


class ImageSource(Source):
    """The images of a folder (sorted by path) or one image file.

    Args:
        path: a folder or an image file.
        recursive: include subfolders; names are then paths relative to ``path``.
        max_side: images with a longer side are skipped (the wire refuses them).
        every, fps, start: see :class:`Source`.

    Attributes:
        paths: the candidate image files, listed when the source is built.
        ignored: files in the folder without an image suffix.

    Raises:
        SourceError: at construction, when the path is missing or holds no image file.
    """

    def __init__(self, path: str | Path, recursive: bool = False, max_side: int = MAX_IMAGE_SIDE,
                 every: int = 1, fps: float | None = None, start: int = 0) -> None:
        super().__init__(every, fps, start)
        self.root = Path(path)
        self.identity = str(self.root.resolve())
        self.max_side = max_side
        self.paths, self.ignored = list_images(self.root, recursive)
        if self.ignored:
            log.info("%d file(s) without an image suffix ignored in %s", len(self.ignored), self.root)

    def __len__(self) -> int:
        kept = range(self.start, len(self.paths))
        return sum(1 for i in kept if i % self.every == 0)

    def name_of(self, path: Path) -> str:
        return path.name if path == self.root else path.relative_to(self.root).as_posix()

    def _frames(self) -> Iterator[SourceFrame]:
        for index, path in enumerate(self.paths):
            if index < self.start or index % self.every:
                continue  # not decoded at all
            name = self.name_of(path)
            try:
                image = read_image(path, self.max_side)
            except (BadFrameError, LimitExceededError) as exc:
                log.warning("skipped %s", exc)
                self.skipped.append((name, str(exc)))
                continue
            yield SourceFrame(name, image, capture_time_us(path), index)


def is_live(spec: str) -> bool:
    """Whether a ``--source`` string names a camera or a network stream."""
    return spec.lower().startswith(LIVE_PREFIXES)


def open_source(spec: str | Path, *, recursive: bool = False, every: int = 1, fps: float | None = None,
                start: int = 0, max_side: int = MAX_IMAGE_SIDE, open_timeout_s: float = 10.0) -> Source:
    """The source a ``--source`` value names (see the module docstring).

    Raises:
        SourceError: nothing can be read from it (the message says what was tried).
    """
    text = str(spec)
    if is_live(text):
        from .video import VideoSource
        return VideoSource(text, live=True, max_side=max_side, every=every, fps=fps,
                           open_timeout_s=open_timeout_s)
    path = Path(text)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        from .video import VideoSource
        return VideoSource(path, live=False, max_side=max_side, every=every, fps=fps, start=start,
                           open_timeout_s=open_timeout_s)
    return ImageSource(path, recursive=recursive, max_side=max_side, every=every, fps=fps, start=start)
