"""The one image decoder of the tree: file or bytes -> RGB pixels, limits checked before any pixel is decoded.

Every reader of still images (edge sources, the cloud's REST upload, the tools' datasets and benchmarks)
goes through :func:`decode_image` / :func:`read_image`, so EXIF orientation, colour modes and size limits
behave the same everywhere::

    bytes or path ──> PIL header (size checked) ──> EXIF transpose ──> to_rgb ──> uint8 [H, W, 3]
                                                                                 └─> to_tensor: float [3, H, W]

:func:`to_rgb` maps every mode PIL decodes to 8-bit RGB: ``L``/``P``/``CMYK``/``YCbCr`` through PIL,
``RGBA``/``LA``/``PA`` composited over black (transparent pixels carry no scene), and 16-bit or 32-bit
integer and float images (``I;16*``, ``I``, ``F``) rescaled from their type's range, so a 16-bit PNG keeps its
brightness instead of clipping at 255.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor

from .errors import BadFrameError, LimitExceededError
from .wire.convert import MAX_IMAGE_SIDE

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File suffixes (case-insensitive) that name still images."""

_HIGH_DEPTH_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any decoded PIL image as ``[H, W, 3]`` uint8 RGB (see the module docstring for each mode)."""
    mode = image.mode
    if mode in _HIGH_DEPTH_SCALE or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":  # float images: assume [0, 1] when they fit, else their own range
            peak = 1.0 if values.max(initial=0.0) <= 1.0 else values.max()
        else:  # 32-bit "I" is what PIL makes of 16-bit PNGs: scale by the 16-bit range unless it exceeds it
            peak = max(_HIGH_DEPTH_SCALE[mode], values.max(initial=0.0)) if mode == "I" else _HIGH_DEPTH_SCALE[mode]
        gray = np.clip(np.rint(values / max(peak, 1e-12) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def to_tensor(array: np.ndarray) -> Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[3, H, W]`` float32 in [0, 1] (the detector's input)."""
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected [H, W, 3] uint8 RGB, got {array.dtype} {tuple(array.shape)}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


def decode_array(
    data: bytes | str | Path, max_pixels: int | None = None, max_side: int | None = MAX_IMAGE_SIDE,
) -> np.ndarray:
    """Decode an image file (bytes or a path; first frame; EXIF orientation applied) to ``[H, W, 3]`` uint8 RGB.

    Args:
        data: the file's bytes, or its path.
        max_pixels: largest ``width * height`` accepted (None: no pixel limit).
        max_side: largest side accepted (None: no side limit).

    Raises:
        BadFrameError: empty, missing, not an image, truncated or corrupt (the message names the file).
        LimitExceededError: over ``max_pixels`` or ``max_side``; checked from the header, before decoding.
    """
    what = f"{data}" if isinstance(data, (str, Path)) else f"the image ({len(data)} bytes)"
    if isinstance(data, bytes) and not data:
        raise BadFrameError("the image is empty (0 bytes); give an image file (JPEG, PNG, ...)")
    try:
        opened = Image.open(io.BytesIO(data) if isinstance(data, bytes) else Path(data))
    except FileNotFoundError as exc:
        raise BadFrameError(f"{what}: no such file") from exc
    except Image.DecompressionBombError as exc:
        raise LimitExceededError(f"{what}: too large to decode: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's decoders raise all of these
        raise BadFrameError(f"{what}: not an image PIL can read ({type(exc).__name__}: {exc})") from exc
    with opened as image:
        width, height = image.size
        if max_side is not None and max(width, height) > max_side:
            raise LimitExceededError(f"{what}: {width}x{height} exceeds {max_side} pixels on a side")
        if max_pixels is not None and width * height > max_pixels:
            raise LimitExceededError(f"{what}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
        try:
            return to_rgb(ImageOps.exif_transpose(image))
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise BadFrameError(f"{what}: the {image.format} image is truncated or corrupt: {exc}") from exc


def decode_image(
    data: bytes | str | Path, max_pixels: int | None = None, max_side: int | None = MAX_IMAGE_SIDE,
) -> Tensor:
    """:func:`decode_array` as the detector's input, ``[3, H, W]`` float32 in [0, 1]."""
    return to_tensor(decode_array(data, max_pixels, max_side))


def read_image(path: str | Path, max_side: int | None = MAX_IMAGE_SIDE) -> Tensor:
    """Decode one image file to ``[3, H, W]`` float32 RGB in [0, 1] (see :func:`decode_array`)."""
    return decode_image(Path(path), max_side=max_side)


def capture_time_us(path: str | Path) -> int:
    """When the picture in an image file was taken, in microseconds since the epoch.

    The EXIF ``DateTimeOriginal`` (then ``DateTime``) tag when the file has one, read as UTC (EXIF carries no
    zone unless ``OffsetTimeOriginal`` is set, which is honoured); otherwise the file's modification time.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            sub = exif.get_ifd(ExifTags.IFD.Exif)
            stamp = sub.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)
            offset = sub.get(ExifTags.Base.OffsetTimeOriginal)
        if stamp:
            when = datetime.strptime(f"{stamp.strip()} {offset or '+00:00'}", "%Y:%m:%d %H:%M:%S %z")
            return int(when.astimezone(timezone.utc).timestamp() * 1_000_000)
    except (OSError, ValueError, SyntaxError):
        pass  # no or unreadable EXIF: fall back to the file's time
    return path.stat().st_mtime_ns // 1000
