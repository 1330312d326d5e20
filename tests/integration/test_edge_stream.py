"""The streaming loop against a real cloud on loopback: live frames first after an outage; a PyAV video."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from linkproxy import LinkProxy
from media import write_video

from fpnlink.cloud.service import CloudService
from fpnlink.cloud.settings import CloudSettings
from fpnlink.edge import Client, EdgeAgent
from fpnlink.edge.cli import main
from fpnlink.edge.results import ResultLog
from fpnlink.edge.sources import Source, SourceFrame
from fpnlink.edge.spool import Spool
from fpnlink.edge.stream import StreamLoop
from fpnlink.shared.codec import make_codec


@pytest.fixture(scope="module")
def cloud(tiny_bundle):
    config = tiny_bundle.config
    settings = CloudSettings(host="127.0.0.1", grpc_port=0, http_port=0, weights=tiny_bundle.weights,
                             min_size=config.min_size, max_size=config.max_size,
                             detections_per_img=config.detections_per_img, warmup=False, store=False)
    with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
        yield handle


class Camera(Source):
    """A live source: one new 64x48 frame every ``1 / rate`` seconds, ``count`` in all."""

    identity = "test-camera"
    replayable = False

    def __init__(self, count: int, rate: float) -> None:
        super().__init__()
        self.count, self.rate = count, rate

    def _frames(self) -> Iterator[SourceFrame]:
        generator = torch.Generator().manual_seed(3)
        for index in range(self.count):
            time.sleep(1 / self.rate)
            yield SourceFrame(f"cam#{index:06d}", torch.rand(3, 48, 64, generator=generator),
                              time.time_ns() // 1000, index)


def test_live_frames_go_first_after_an_outage_and_the_backlog_drains(cloud, tiny_bundle, tmp_path):
    proxy = LinkProxy(cloud.grpc_target)
    proxy.down()  # the outage: the camera's frames pile up in the spool
    agent = EdgeAgent(tiny_bundle, make_codec("quant"), ["detect"], stream_id="live")
    spool = Spool(tmp_path / "spool.sqlite", live_window_s=0.5)
    results = ResultLog(tmp_path / "results.jsonl", resume=False)
    answered_at: dict[int, float] = {}

    def on_row(row):
        answered_at[row["frame_id"]] = time.time()

    with Client(proxy.target) as client:
        loop = StreamLoop(agent, Camera(count=24, rate=8), spool, client, results, phi=dict.fromkeys("0123", 4.0),
                          on_row=on_row, window=2, backoff_s=0.05, max_backoff_s=0.2, progress=False)
        runner = threading.Thread(target=loop.run)
        runner.start()
        deadline = time.monotonic() + 60
        while spool.depth()[0] < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)  # older than the live window now: the backlog
        assert len(answered_at) == 0 and spool.depth()[0] >= 8
        link_back = time.time()
        proxy.up()
        runner.join(120)
    results.close()
    spool.close()
    proxy.close()
    assert not runner.is_alive()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(line["frame_id"] for line in lines) == list(range(1, 25))  # all answered, once each
    backlog = {line["frame_id"] for line in lines if line["capture_time_us"] / 1e6 < link_back - 0.5}
    assert len(backlog) >= 8
    first_after = [line["frame_id"] for line in lines][:3]
    assert any(frame_id not in backlog for frame_id in first_after), (first_after, sorted(backlog))
    assert max(answered_at[i] for i in backlog) > min(answered_at[i] for i in first_after)  # drained behind


def test_video_file_with_fps_and_sampling(cloud, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=12, fps=10)
    out = tmp_path / "results.jsonl"
    started = time.monotonic()
    argv = ["run", "--source", str(video), "--server", cloud.grpc_target, "--weights", "random:0", "--codec",
            "quant", "--phi", "4", "--every", "3", "--fps", "5", "--out", str(out)]
    assert main(argv) == 0
    elapsed = time.monotonic() - started
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["image"] for line in lines] == [f"clip.mp4#{i:06d}" for i in (0, 3, 6, 9)]
    origin = 1704164645 * 1_000_000  # the video's creation_time
    assert [line["capture_time_us"] - origin for line in lines] == [0, 300_000, 600_000, 900_000]
    assert all("error" not in line["result"] and "detect" in line["result"] for line in lines)
    assert elapsed >= 0.6  # 4 frames at 5 fps: three waits of 0.2 s
