"""End to end over real gRPC on loopback: edge agent -> raw codec -> cloud heads == the monolithic models."""

from __future__ import annotations

import pytest
import torch

from fpnlink.cloud.service import CloudService
from fpnlink.cloud.settings import CloudSettings
from fpnlink.edge import Client, EdgeAgent
from fpnlink.shared.codec import make_codec
from fpnlink.shared.model import TASKS
from fpnlink.tools.bench.split import compare_with_monolith

BOX_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def cloud(tiny_bundle):
    config = tiny_bundle.config
    settings = CloudSettings(grpc_port=0, http_port=0, weights=tiny_bundle.weights, min_size=config.min_size,
                             max_size=config.max_size, detections_per_img=config.detections_per_img, warmup=False)
    with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as handle:
        yield handle


@pytest.fixture
def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return [torch.rand(3, 96, 128, generator=generator), torch.rand(3, 120, 90, generator=generator)]


def test_stream_reproduces_monolith_for_all_three_models(cloud, tiny_bundle, images):
    agent = EdgeAgent(tiny_bundle, make_codec("raw"), list(TASKS), stream_id="e2e")
    encoded = {i: agent.encode(image, i) for i, image in enumerate(images, start=1)}
    with Client(cloud.grpc_target) as client:
        results = {r.frame_id: r for r in client.stream(e.frame for e in encoded.values())}
    assert sorted(results) == sorted(encoded)
    for frame_id, image in enumerate(images, start=1):
        frame, result = encoded[frame_id].frame, results[frame_id]
        assert not result.HasField("error"), result.error.message
        assert "pool" not in {scale.name for scale in frame.scales}
        assert result.frame_bytes == len(frame.SerializeToString()) == encoded[frame_id].frame_bytes
        report = compare_with_monolith(tiny_bundle, image, result)
        for arch, entry in report.items():
            assert entry["detections"] > 0, f"{arch}: random weights should still detect something"
            assert entry["count_equal"] and entry["labels_equal"], arch
            assert entry["max_abs_box_diff"] <= BOX_TOLERANCE, arch
            assert entry["max_abs_score_diff"] <= 1e-5, arch
        assert report["mask"]["masks_equal"]
        assert report["keypoint"]["max_abs_keypoint_diff"] <= BOX_TOLERANCE


def test_unary_analyze_matches_stream(cloud, tiny_bundle, images):
    agent = EdgeAgent(tiny_bundle, make_codec("raw"), ["detect"], stream_id="e2e-unary")
    encoded = agent.encode(images[0], 99)
    with Client(cloud.grpc_target) as client:
        result = client.analyze(encoded.frame)
    report = compare_with_monolith(tiny_bundle, images[0], result, tasks=("detect",))
    assert report["faster"]["max_abs_box_diff"] <= BOX_TOLERANCE
    assert result.frame_bytes == encoded.frame.ByteSize()
