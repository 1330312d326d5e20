"""Frame sources: folders and single files; unreadable files are skipped and counted, never fatal."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fpnlink.edge.sources import ImageSource, SourceError, list_images, read_image


class TestImageSource:
    def test_folder_sorted_with_pixels(self, image_dir, write_png):
        expected = write_png(image_dir / "a.png", seed=1)
        source = ImageSource(image_dir)
        frames = list(source)
        assert [name for name, _ in frames] == ["a.png", "b.png"]
        image = frames[0][1]
        assert image.shape == (3, 96, 128) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(expected))
        assert len(source) == 2 and source.skipped == []
        assert [p.name for p in source.ignored] == ["notes.txt"]

    def test_recursive_names_are_relative(self, image_dir):
        names = [name for name, _ in ImageSource(image_dir, recursive=True)]
        assert names == ["a.png", "b.png", "sub/c.png"]

    def test_single_file(self, image_dir):
        frames = list(ImageSource(image_dir / "b.png"))
        assert [name for name, _ in frames] == ["b.png"]

    @pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".bmp", ".webp"])
    def test_formats(self, tmp_path, write_png, suffix):
        write_png(tmp_path / f"x{suffix}", height=20, width=30)
        (name, image), = ImageSource(tmp_path)
        assert name == f"x{suffix}" and image.shape == (3, 20, 30)

    @pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
    def test_modes_become_rgb(self, tmp_path, write_png, mode):
        write_png(tmp_path / "x.png", height=20, width=30, mode=mode)
        assert read_image(tmp_path / "x.png").shape == (3, 20, 30)

    def test_bad_file_is_skipped_and_counted(self, image_dir, caplog):
        (image_dir / "broken.png").write_bytes(b"\x89PNG definitely not a png")
        source = ImageSource(image_dir)
        with caplog.at_level(logging.WARNING, logger="fpnlink.edge.sources"):
            names = [name for name, _ in source]
        assert names == ["a.png", "b.png"]
        assert len(source.skipped) == 1
        name, reason = source.skipped[0]
        assert name == "broken.png" and "not a readable image" in reason
        assert "broken.png" in caplog.text

    def test_oversized_image_is_skipped(self, image_dir):
        source = ImageSource(image_dir, max_side=64)
        assert list(source) == []
        assert all("exceeds 64 pixels" in reason for _, reason in source.skipped) and len(source.skipped) == 2

    def test_iterating_again_resets_skips(self, image_dir):
        (image_dir / "broken.png").write_bytes(b"junk")
        source = ImageSource(image_dir)
        list(source)
        list(source)
        assert len(source.skipped) == 1


class TestListImages:
    def test_empty_folder(self, tmp_path):
        with pytest.raises(SourceError, match="no image files"):
            list_images(tmp_path)

    def test_images_only_in_subfolders_hint_recursive(self, tmp_path, write_png):
        write_png(tmp_path / "deep" / "x.png")
        with pytest.raises(SourceError, match="--recursive"):
            ImageSource(tmp_path)
        assert len(ImageSource(tmp_path, recursive=True)) == 1

    def test_missing_path(self, tmp_path):
        with pytest.raises(SourceError, match="does not exist"):
            ImageSource(tmp_path / "nope")

    def test_hidden_files_left_out(self, image_dir, write_png):
        write_png(image_dir / ".hidden.png")
        images, ignored = list_images(image_dir)
        assert [p.name for p in images] == ["a.png", "b.png"]
        assert [p.name for p in ignored] == ["notes.txt"]

    def test_read_image_names_the_file(self, tmp_path):
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(np.arange(10, dtype=np.uint8).tobytes())
        with pytest.raises(SourceError, match="bad.jpg: not a readable image"):
            read_image(bad)
