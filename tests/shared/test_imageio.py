"""The tree's one image decoder: every input mode becomes 8-bit RGB, EXIF orientation applied, limits first."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fpnlink.shared.errors import BadFrameError, LimitExceededError
from fpnlink.shared.imageio import capture_time_us, decode_array, decode_image, read_image, to_rgb, to_tensor

ORIENTATION = 0x0112
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL, EXIF_IFD = 0x9003, 0x9011, 0x8769


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class TestModes:
    def test_rgb_round_trip(self):
        pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
        assert np.array_equal(decode_array(_png(Image.fromarray(pixels))), pixels)

    def test_gray_is_replicated(self):
        gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
        rgb = decode_array(_png(Image.fromarray(gray, "L")))
        assert rgb.shape == (5, 7, 3) and all(np.array_equal(rgb[..., c], gray) for c in range(3))

    def test_rgba_is_composited_over_black(self):
        rgba = np.zeros((2, 2, 4), dtype=np.uint8)
        rgba[0, 0] = (200, 100, 50, 255)  # opaque
        rgba[0, 1] = (200, 100, 50, 0)    # transparent: no scene behind it
        rgba[1, 0] = (200, 100, 50, 128)  # half
        rgb = decode_array(_png(Image.fromarray(rgba, "RGBA")))
        assert tuple(rgb[0, 0]) == (200, 100, 50) and tuple(rgb[0, 1]) == (0, 0, 0)
        assert tuple(rgb[1, 0]) == (100, 50, 25)

    def test_16_bit_keeps_its_brightness(self):
        values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
        data = _png(Image.fromarray(values))
        with Image.open(io.BytesIO(data)) as written:
            assert written.mode.startswith("I")  # really a 16-bit PNG, not 8-bit
        rgb = decode_array(data)
        assert list(rgb[0, :, 0]) == [0, 128, 255]  # not clipped to 255 from value 256 up

    def test_float_image(self):
        values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
        assert list(to_rgb(Image.fromarray(values, "F"))[0, :, 0]) == [0, 128, 255]

    def test_palette_and_bilevel(self):
        pixels = np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)
        for mode in ("P", "1", "CMYK"):
            assert to_rgb(Image.fromarray(pixels).convert(mode)).shape == (6, 6, 3)


class TestExif:
    def test_orientation_is_applied(self):
        pixels = np.zeros((10, 20, 3), dtype=np.uint8)
        pixels[0, 0] = 255  # top-left marker
        image = Image.fromarray(pixels)
        exif = image.getexif()
        exif[ORIENTATION] = 6  # "rotate 90 CW to view"
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", exif=exif, quality=100)
        rgb = decode_array(buffer.getvalue())
        assert rgb.shape == (20, 10, 3)
        assert rgb[0, -1].mean() > 200 and rgb[0, 0].mean() < 50  # the marker moved to the top-right

    def test_capture_time_from_exif(self, tmp_path):
        image = Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))
        exif = image.getexif()
        exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = "2024:05:06 07:08:09"
        exif.get_ifd(EXIF_IFD)[OFFSET_TIME_ORIGINAL] = "+02:00"
        image.save(tmp_path / "x.jpg", exif=exif)
        assert capture_time_us(tmp_path / "x.jpg") == 1714972089 * 1_000_000  # 05:08:09 UTC

    def test_capture_time_without_exif_is_the_file_time(self, tmp_path):
        path = tmp_path / "x.png"
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(path)
        assert capture_time_us(path) == path.stat().st_mtime_ns // 1000


class TestBadInput:
    def test_empty(self):
        with pytest.raises(BadFrameError, match="empty"):
            decode_image(b"")

    def test_not_an_image(self):
        with pytest.raises(BadFrameError, match="not an image PIL can read"):
            decode_image(b"plain text, not pixels")

    def test_truncated(self):
        pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        data = _png(Image.fromarray(pixels))
        with pytest.raises(BadFrameError, match="truncated or corrupt"):
            decode_image(data[: len(data) // 2])

    def test_missing_file_is_named(self, tmp_path):
        with pytest.raises(BadFrameError, match="nope.png: no such file"):
            read_image(tmp_path / "nope.png")

    def test_limits_are_checked_from_the_header(self):
        data = _png(Image.new("RGB", (300, 20)))
        with pytest.raises(LimitExceededError, match="exceeds 256 pixels on a side"):
            decode_image(data, max_side=256)
        with pytest.raises(LimitExceededError, match="exceeds the limit of 1000 pixels"):
            decode_image(data, max_pixels=1000)

    def test_to_tensor_checks_its_input(self):
        assert to_tensor(np.zeros((2, 3, 3), dtype=np.uint8)).shape == (3, 2, 3)
        with pytest.raises(ValueError, match="uint8 RGB"):
            to_tensor(np.zeros((2, 3), dtype=np.uint8))
        assert decode_image(_png(Image.new("RGB", (3, 2), (255, 0, 0)))).dtype == torch.float32
