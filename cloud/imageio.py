"""Uploaded image bytes -> a float [3, H, W] tensor: the tree's one decoder, :mod:`fpnlink.shared.imageio`.

``decode_image(data, max_pixels)`` raises ``BadFrameError`` (empty, not an image, corrupt) and
``LimitExceededError`` (too many pixels, checked from the header before decoding).
"""

from fpnlink.shared.imageio import decode_image

__all__ = ["decode_image"]
