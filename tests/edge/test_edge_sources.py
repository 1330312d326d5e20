"""Frame sources: folders, single files, video files and live streams; unreadable input is skipped or refused
with a clear error, never fatal mid-run."""

from __future__ import annotations

import functools
import http.server
import logging
import socket
import threading
import time

import numpy as np
import pytest
import torch

from fpnlink.edge.sources import ImageSource, SourceError, list_images, open_source


class TestImageSource:
    def test_folder_sorted_with_pixels(self, image_dir, write_png):
        expected = write_png(image_dir / "a.png", seed=1)
        source = ImageSource(image_dir)
        frames = list(source)
        assert [f.name for f in frames] == ["a.png", "b.png"]
        image = frames[0].image
        assert image.shape == (3, 96, 128) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(expected))
        assert len(source) == 2 and source.skipped == []
        assert [p.name for p in source.ignored] == ["notes.txt"]

    def test_recursive_names_are_relative(self, image_dir):
        names = [f.name for f in ImageSource(image_dir, recursive=True)]
        assert names == ["a.png", "b.png", "sub/c.png"]

    def test_single_file(self, image_dir):
        frames = list(ImageSource(image_dir / "b.png"))
        assert [f.name for f in frames] == ["b.png"]

    @pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".bmp", ".webp"])
    def test_formats(self, tmp_path, write_png, suffix):
        write_png(tmp_path / f"x{suffix}", height=20, width=30)
        frame, = ImageSource(tmp_path)
        assert frame.name == f"x{suffix}" and frame.image.shape == (3, 20, 30)

    @pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
    def test_modes_become_rgb(self, tmp_path, write_png, mode):
        write_png(tmp_path / "x.png", height=20, width=30, mode=mode)
        frame, = ImageSource(tmp_path)
        assert frame.image.shape == (3, 20, 30)

    def test_bad_file_is_skipped_and_counted(self, image_dir, caplog):
        (image_dir / "broken.png").write_bytes(b"\x89PNG definitely not a png")
        source = ImageSource(image_dir)
        with caplog.at_level(logging.WARNING, logger="fpnlink.edge.sources"):
            names = [f.name for f in source]
        assert names == ["a.png", "b.png"]
        assert len(source.skipped) == 1
        name, reason = source.skipped[0]
        assert name == "broken.png" and "not an image PIL can read" in reason
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

    def test_bad_single_file_is_skipped_naming_it(self, tmp_path):
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(np.arange(10, dtype=np.uint8).tobytes())
        source = ImageSource(bad)
        assert list(source) == [] and "bad.jpg: not an image PIL can read" in source.skipped[0][1]


class TestSampling:
    def test_every_nth_and_start(self, tmp_path, write_png):
        for index in range(7):
            write_png(tmp_path / f"{index}.png", height=8, width=8, seed=index)
        source = ImageSource(tmp_path, every=3)
        assert [f.index for f in source] == [0, 3, 6] and len(source) == 3
        resumed = ImageSource(tmp_path, every=3, start=4)
        assert [f.name for f in resumed] == ["6.png"] and len(resumed) == 1

    def test_fps_paces_a_replayable_source(self, tmp_path, write_png):
        for index in range(4):
            write_png(tmp_path / f"{index}.png", height=8, width=8, seed=index)
        started = time.monotonic()
        assert len(list(ImageSource(tmp_path, fps=10))) == 4
        assert time.monotonic() - started >= 0.29  # three waits of 0.1 s between four frames

    @pytest.mark.parametrize("kwargs, message", [
        ({"every": 0}, "every must be >= 1"), ({"fps": 0}, "fps must be > 0"), ({"start": -1}, "start must be"),
    ])
    def test_bad_settings(self, image_dir, kwargs, message):
        with pytest.raises(SourceError, match=message):
            ImageSource(image_dir, **kwargs)

    def test_capture_time_is_the_file_time(self, image_dir):
        frame = next(iter(ImageSource(image_dir)))
        assert frame.capture_time_us == (image_dir / "a.png").stat().st_mtime_ns // 1000


class TestVideoFile:
    def test_frames_names_and_capture_times(self, video_file):
        source = open_source(video_file)
        assert source.replayable and len(source) == 12
        frames = list(source)
        assert [f.name for f in frames[:2]] == ["clip.mp4#000000", "clip.mp4#000001"]
        assert [f.index for f in frames] == list(range(12))
        assert frames[0].image.shape == (3, 48, 64) and frames[0].image.dtype == torch.float32
        levels = [round(float(f.image.mean()) * 255) for f in frames]
        assert all(abs(level - 20 * i) <= 3 for i, level in enumerate(levels))  # the right frame, in order
        origin = 1704164645 * 1_000_000  # creation_time 2024-01-02T03:04:05Z
        assert [f.capture_time_us - origin for f in frames[:3]] == [0, 100_000, 200_000]

    def test_every_nth_fps_and_resume(self, video_file):
        started = time.monotonic()
        frames = list(open_source(video_file, every=4, fps=20))
        assert [f.index for f in frames] == [0, 4, 8]
        assert time.monotonic() - started >= 0.09  # paced: two waits of 0.05 s
        assert [f.index for f in open_source(video_file, every=4, start=5)] == [8]

    def test_no_creation_time_uses_the_file_time(self, tmp_path, make_video):
        path = make_video(tmp_path / "bare.mp4", frames=2, creation_time=None)
        first = next(iter(open_source(path)))
        assert first.capture_time_us == path.stat().st_mtime_ns // 1000

    def test_broken_video_is_refused_at_open(self, tmp_path):
        bad = tmp_path / "broken.mp4"
        bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"junk" * 100)
        with pytest.raises(SourceError, match="cannot open video source"):
            open_source(bad)

    def test_truncated_video_yields_what_it_holds(self, tmp_path, make_video):
        path = make_video(tmp_path / "cut.ts", frames=12)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        frames = list(open_source(path))
        assert 0 < len(frames) < 12


class TestLiveSources:
    def test_http_stream(self, tmp_path, make_video):
        make_video(tmp_path / "live.ts", frames=6)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_port}/live.ts"
            source = open_source(url)
            assert not source.replayable and len(source) == 0
            before = time.time_ns() // 1000
            frames = list(source)
        finally:
            server.shutdown()
            server.server_close()
        assert [f.name for f in frames] == [f"{url}#{i:06d}" for i in range(6)]
        assert all(f.capture_time_us >= before for f in frames)  # stamped on arrival

    def test_unreachable_url_fails_fast(self, closed_port):
        started = time.monotonic()
        with pytest.raises(SourceError, match="cannot open video source 'rtsp://127.0.0.1"):
            open_source(f"rtsp://127.0.0.1:{closed_port}/cam", open_timeout_s=2)
        assert time.monotonic() - started < 5

    def test_missing_http_resource(self, tmp_path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with pytest.raises(SourceError, match="cannot open video source"):
                open_source(f"http://127.0.0.1:{server.server_port}/none.ts", open_timeout_s=2)
        finally:
            server.shutdown()
            server.server_close()

    def test_missing_camera(self):
        with pytest.raises(SourceError, match="cannot open video source '/dev/video99'"):
            open_source("/dev/video99")


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
