"""Frame sources: a folder of images or a single image file, yielding ``(name, image)`` pairs.

``image`` is a float tensor [3, H, W] in [0, 1] (RGB, EXIF orientation applied), the input
:class:`~fpnlink.edge.agent.EdgeAgent` expects. A file that cannot be decoded, or that exceeds the
wire's size limit, is skipped with a warning and recorded in :attr:`ImageSource.skipped`, so one bad
file never ends a run. Files without an image suffix in a folder are not candidates at all; they are
counted in :attr:`ImageSource.ignored`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..shared.errors import FpnlinkError
from ..shared.wire.convert import MAX_IMAGE_SIDE

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""File suffixes (case-insensitive) a folder source picks up."""

log = logging.getLogger(__name__)


class SourceError(FpnlinkError, ValueError):
    """A source path does not exist or holds no image to read."""


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
        raise SourceError(f"source {str(root)!r} does not exist (give a folder of images or one image file)")
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


def read_image(path: str | Path, max_side: int = MAX_IMAGE_SIDE) -> Tensor:
    """Decode one image file into [3, H, W] float32 RGB in [0, 1].

    Raises:
        SourceError: the file is not a decodable image, or a side exceeds ``max_side``.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size  # read from the header: checked before decoding any pixel
            if max(width, height) > max_side:
                raise SourceError(f"{path}: {width}x{height} exceeds {max_side} pixels on a side")
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except SourceError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types (OSError, SyntaxError, ValueError, ...)
        raise SourceError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageSource:
    """Iterate over the images of a folder (sorted by path) or over one image file.

    Args:
        path: a folder or an image file.
        recursive: include subfolders; names are then paths relative to ``path``.
        max_side: images with a longer side are skipped (the wire refuses them).

    Yields:
        ``(name, image)``: the file's path relative to the folder (POSIX style) or, for a single
        file, its file name; image is [3, H, W] float32 in [0, 1].

    Attributes:
        paths: the candidate image files, listed when the source is built.
        ignored: files in the folder without an image suffix.
        skipped: ``(name, reason)`` for every candidate that could not be read, filled while iterating.

    Raises:
        SourceError: at construction, when the path is missing or holds no image file.
    """

    def __init__(self, path: str | Path, recursive: bool = False, max_side: int = MAX_IMAGE_SIDE) -> None:
        self.root = Path(path)
        self.max_side = max_side
        self.paths, self.ignored = list_images(self.root, recursive)
        self.skipped: list[tuple[str, str]] = []
        if self.ignored:
            log.info("%d file(s) without an image suffix ignored in %s", len(self.ignored), self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def name_of(self, path: Path) -> str:
        return path.name if path == self.root else path.relative_to(self.root).as_posix()

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        self.skipped = []
        for path in self.paths:
            name = self.name_of(path)
            try:
                image = read_image(path, self.max_side)
            except SourceError as exc:
                log.warning("skipped %s", exc)
                self.skipped.append((name, str(exc)))
                continue
            yield name, image
