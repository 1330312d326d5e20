"""Uploaded image bytes -> a float [3, H, W] tensor in [0, 1], with size limits checked before decoding."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from fpnlink.shared.errors import BadFrameError, LimitExceededError


def decode_image(data: bytes, max_pixels: int) -> Tensor:
    """Decode an uploaded image (any format PIL reads; first frame; EXIF orientation applied).

    Args:
        data: the file's bytes.
        max_pixels: largest ``width * height`` accepted; checked from the header, before decoding.

    Returns:
        RGB float tensor [3, H, W] with values in [0, 1].

    Raises:
        BadFrameError: empty or not a decodable image.
        LimitExceededError: more than ``max_pixels`` pixels.
    """
    if not data:
        raise BadFrameError("the upload is empty; send an image file (JPEG, PNG, ...) as the 'image' field")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise LimitExceededError(f"image is too large to decode: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadFrameError(f"the upload ({len(data)} bytes) is not an image PIL can read: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise LimitExceededError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    try:
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadFrameError(f"the {image.format} image is truncated or corrupt: {exc}") from exc
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
