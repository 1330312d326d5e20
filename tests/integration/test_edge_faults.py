"""Store-and-forward under faults, with real processes on loopback: every source frame answered exactly once.

(a) the cloud is SIGKILLed mid-run and restarted; (b) the edge is SIGKILLed mid-run and started again;
(c) the link is throttled and cut by a loopback proxy. Each run's ``results.jsonl`` must hold one line per
source image, none missing and none twice, every one answered without error.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from linkproxy import LinkProxy
from PIL import Image
from processes import CloudProcess, edge_command, rows, start_edge, wait_for_rows

IMAGES = 12
EDGE_TIMEOUT_S = 240


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for index in range(IMAGES):
        pixels = np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{index:02d}.png")
    return images


@pytest.fixture
def cloud(tmp_path: Path):
    process = CloudProcess(tmp_path)
    process.start()
    yield process
    process.stop()


def assert_exactly_once(out: Path, folder: Path) -> list[dict]:
    lines = rows(out)
    names = Counter(line["image"] for line in lines)
    expected = sorted(p.name for p in folder.iterdir())
    assert sorted(names) == expected, f"missing {set(expected) - set(names)}"
    assert max(names.values()) == 1, f"answered twice: {[n for n, c in names.items() if c > 1]}"
    assert len({(line["stream_id"], line["frame_id"]) for line in lines}) == len(lines)
    assert all("result" in line and "error" not in line["result"] for line in lines), lines
    return lines


def test_cloud_killed_and_restarted(cloud, folder, tmp_path):
    out, log = tmp_path / "results.jsonl", tmp_path / "edge.log"
    edge = start_edge(edge_command(folder, cloud.target, out, tmp_path / "spool.sqlite", "--fps", "3"), log)
    try:
        wait_for_rows(out, 3, edge)
        cloud.kill()
        answered_before = len(rows(out))
        time.sleep(2.0)  # frames keep being spooled while the cloud is gone
        cloud.start()
        assert edge.wait(EDGE_TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        edge.kill()
    lines = assert_exactly_once(out, folder)
    assert answered_before < IMAGES and len(lines) == IMAGES
    assert "link to" in log.read_text()  # it noticed the outage and reconnected


def test_edge_killed_and_restarted(cloud, folder, tmp_path):
    out, log, spool = tmp_path / "results.jsonl", tmp_path / "edge.log", tmp_path / "spool.sqlite"
    command = edge_command(folder, cloud.target, out, spool, "--fps", "3")
    edge = start_edge(command, log)
    try:
        wait_for_rows(out, 4, edge)
        edge.kill()  # SIGKILL
        edge.wait(30)
        first = rows(out)
        assert len(first) < IMAGES
        edge = start_edge(command, log)
        assert edge.wait(EDGE_TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        edge.kill()
    lines = assert_exactly_once(out, folder)
    assert lines[: len(first)] == first  # the first run's lines stay, none rewritten
    assert len({line["stream_id"] for line in lines}) == 1  # the stream id persisted in the spool
    assert "resuming" in log.read_text()


def test_throttled_and_cut_link(cloud, folder, tmp_path):
    rate = 40_000  # bytes per second, each way
    proxy = LinkProxy(cloud.target, rate_bytes_s=rate)
    out, log = tmp_path / "results.jsonl", tmp_path / "edge.log"
    started = time.monotonic()
    edge = start_edge(edge_command(folder, proxy.target, out, tmp_path / "spool.sqlite"), log)
    try:
        wait_for_rows(out, 4, edge)
        proxy.down()  # the link breaks mid-run ...
        time.sleep(1.5)
        proxy.up()  # ... and comes back, still throttled
        assert edge.wait(EDGE_TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        edge.kill()
        proxy.close()
    elapsed = time.monotonic() - started
    lines = assert_exactly_once(out, folder)
    sent = sum(line["frame_bytes"] for line in lines)
    assert proxy.forwarded >= sent  # every answered frame crossed the proxy (resends add to it)
    assert elapsed >= sent / rate  # the throttle held
