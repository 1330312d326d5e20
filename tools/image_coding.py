"""The image codecs fpnlink competes with (JPEG, WebP through PIL), as bytes in and out."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fpnlink.shared.imageio import decode_array

REFERENCE_JPEG_QUALITY = 75
"""The image upload fpnlink's feature frames are compared with (the demo's table, ``bench rd``'s edge default)."""


def encode_image(array: np.ndarray, fmt: str, quality: int) -> bytes:
    """``[H, W, 3]`` uint8 RGB as a JPEG or WebP file (PIL, 4:2:0, Huffman-optimised JPEG)."""
    buffer = io.BytesIO()
    options = {"optimize": True} if fmt == "JPEG" else {"method": 4}
    Image.fromarray(array).save(buffer, format=fmt, quality=int(quality), **options)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """A coded image back to ``[H, W, 3]`` uint8 RGB (the tree's one decoder, :mod:`fpnlink.shared.imageio`)."""
    return decode_array(data)
