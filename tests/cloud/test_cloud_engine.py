"""CloudEngine: capabilities, frame processing, idempotency, validation order, images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import to_tensor
from cloud_helpers import BAD_CASE_NAMES, EdgeOutput, assert_same_task_results, bad_cases, make_frame

from fpnlink.cloud import CloudEngine, decode_frame, frame_digest
from fpnlink.cloud.engine import _ResultCache
from fpnlink.cloud.errors import status_for
from fpnlink.shared.codec import make_codec
from fpnlink.shared.errors import BadFrameError, FingerprintMismatchError, LimitExceededError, UnsupportedError
from fpnlink.shared.model import TASK_ARCH, ModelBundle, ModelConfig, load_bundle
from fpnlink.shared.wire import pb, task_result
from fpnlink.tools.synth import render_scene


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> CloudEngine:
    return CloudEngine(tiny_bundle)


class TestCapabilities:
    def test_describes_models_codecs_and_limits(self, engine, tiny_bundle):
        caps = engine.capabilities()
        assert caps.weights == "random:0" and caps.trained is False
        assert {m.arch for m in caps.models} == {"faster", "mask", "keypoint"}
        for model in caps.models:
            assert model.backbone_fingerprint == tiny_bundle.backbone_fingerprints[model.arch]
            assert model.head_fingerprint == tiny_bundle.head_fingerprints[model.arch]
            assert list(model.categories) == tiny_bundle.categories[model.arch]
        raw = next(c for c in caps.codecs if c.name == "raw")
        assert raw.fingerprint == make_codec("raw").fingerprint and raw.lossless
        quant = next(c for c in caps.codecs if c.name == "quant")
        assert (quant.phi_min, quant.phi_max, quant.lossless) == (1.0, 8.0, False)
        assert list(caps.tasks) == [pb.DETECT, pb.SEGMENT, pb.KEYPOINTS]
        assert (caps.min_size, caps.max_size, caps.max_frame_bytes) == (128, 128, 256 * 1024 * 1024)

    def test_codec_subset(self, tiny_bundle):
        engine = CloudEngine(tiny_bundle, {"quant": make_codec("quant")}, max_frame_bytes=4096)
        caps = engine.capabilities()
        assert [c.name for c in caps.codecs] == ["quant"] and caps.max_frame_bytes == 4096

    @pytest.mark.parametrize("kwargs", [{"max_frame_bytes": 0}, {"cache_size": -1}])
    def test_rejects_bad_arguments(self, tiny_bundle, kwargs):
        with pytest.raises(ValueError):
            CloudEngine(tiny_bundle, **kwargs)


class TestProcess:
    def test_raw_frame_equals_heads_on_the_features(self, engine, tiny_bundle, edge_output):
        frame = make_frame(edge_output, 1)
        result = engine.process(frame, frame.ByteSize())
        with torch.inference_mode():
            expected = tiny_bundle.cloud_half("faster")(edge_output.features, [edge_output.input_size],
                                                        [edge_output.original_size])[0]
        assert (result.stream_id, result.frame_id, result.frame_bytes) == ("cam-1", 1, frame.ByteSize())
        assert result.trained is False and not result.HasField("error")
        assert set(result.stage_ms) == {"decode", "heads", "total"}
        assert result.stage_ms["total"] >= result.stage_ms["heads"] > 0
        [task] = result.results
        assert task.task == pb.DETECT
        boxes = torch.tensor([list(d.box) for d in task.detections]).reshape(-1, 4)
        torch.testing.assert_close(boxes, expected["boxes"])

    def test_all_three_tasks(self, engine, edge_output):
        frame = make_frame(edge_output, 2, tasks=("detect", "segment", "keypoints"))
        result = engine.process(frame, frame.ByteSize())
        assert [r.task for r in result.results] == [pb.DETECT, pb.SEGMENT, pb.KEYPOINTS]
        segment, keypoints = result.results[1], result.results[2]
        assert all(d.HasField("mask") for d in segment.detections)
        assert all(len(d.keypoints) == 17 * 3 for d in keypoints.detections)

    def test_lossy_codec(self, engine, edge_output):
        frame = make_frame(edge_output, 3, codec="quant")
        result = engine.process(frame, frame.ByteSize())
        assert result.results[0].task == pb.DETECT and not result.HasField("error")

    def test_resent_frame_is_answered_from_cache(self, engine, edge_output):
        frame = make_frame(edge_output, 1)
        data = frame.SerializeToString()
        first = engine.process(decode_frame(data), len(data), digest=frame_digest(data))
        hits = engine.cache_hits
        again = engine.process(decode_frame(data), len(data), digest=frame_digest(data))
        assert again == first and engine.cache_hits == hits + 1
        # Without a digest the engine hashes a deterministic re-serialization: still the same result.
        assert engine.process(frame, len(data)) == first

    @pytest.mark.parametrize("name", BAD_CASE_NAMES)
    def test_bad_frames_are_refused_before_any_work(self, engine, edge_output, name):
        case = bad_cases(edge_output)[name]
        with pytest.raises(Exception) as info:
            engine.process(decode_frame(case.data), len(case.data))
        assert status_for(info.value)[0].name == case.code
        assert case.message in str(info.value)

    def test_frame_over_the_limit(self, tiny_bundle, edge_output):
        engine = CloudEngine(tiny_bundle, max_frame_bytes=1024)
        frame = make_frame(edge_output, 4)
        with pytest.raises(LimitExceededError, match="exceeds the limit of 1024"):
            engine.process(frame, frame.ByteSize())
        with pytest.raises(LimitExceededError):
            decode_frame(frame.SerializeToString(), max_frame_bytes=1024)

    def test_model_fingerprint_message_is_actionable(self, engine, edge_output):
        frame = make_frame(edge_output, 5, model_fingerprint="feedfacefeedface")
        with pytest.raises(Exception, match=r"needs backbone '[0-9a-f]{16}'.*same weights and input sizes"):
            engine.process(frame, frame.ByteSize())


class TestResultCache:
    def test_bounded_lru(self):
        cache = _ResultCache(2)
        for frame_id in (1, 2):
            cache.put(("s", frame_id, "d"), pb.Result(frame_id=frame_id))
        assert cache.get(("s", 1, "d")).frame_id == 1  # 1 is now most recent
        cache.put(("s", 3, "d"), pb.Result(frame_id=3))
        assert cache.get(("s", 2, "d")) is None
        assert cache.get(("s", 1, "d")).frame_id == 1 and cache.get(("s", 3, "d")).frame_id == 3

    def test_returns_copies(self):
        cache = _ResultCache(1)
        cache.put(("s", 1, "d"), pb.Result(frame_id=1))
        cache.get(("s", 1, "d")).frame_id = 99
        assert cache.get(("s", 1, "d")).frame_id == 1

    def test_disabled(self):
        cache = _ResultCache(0)
        cache.put(("s", 1, "d"), pb.Result())
        assert cache.get(("s", 1, "d")) is None


class TestAnalyzeImage:
    def test_runs_front_half_and_heads(self, engine):
        image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))
        result = engine.analyze_image(image, ["detect"])
        assert set(result.stage_ms) == {"backbone", "heads", "total"}
        assert [r.task for r in result.results] == [pb.DETECT] and result.trained is False
        assert all(0 <= d.box[2] <= 128 and 0 <= d.box[3] <= 96 for d in result.results[0].detections)

    @pytest.mark.parametrize("image", [torch.rand(1, 96, 128), torch.rand(96, 128),
                                       torch.zeros(3, 8, 8, dtype=torch.uint8), torch.full((3, 8, 8), 2.0),
                                       torch.zeros(3, 0, 8)])
    def test_rejects_bad_images(self, engine, image):
        with pytest.raises(BadFrameError):
            engine.analyze_image(image, ["detect"])

    @pytest.mark.parametrize("tasks", [[], ["track"]])
    def test_rejects_bad_tasks(self, engine, tasks):
        with pytest.raises(UnsupportedError):
            engine.analyze_image(torch.rand(3, 8, 8), tasks)


class TestBackbones:
    def test_tasks_needing_different_backbones_are_refused(self, tiny_bundle, edge_output):
        mask = copy.deepcopy(tiny_bundle.models["mask"])
        with torch.no_grad():
            next(mask.backbone.parameters()).add_(1.0)
        mixed = ModelBundle("mixed", trained=False, config=tiny_bundle.config,
                            models={"faster": tiny_bundle.models["faster"], "mask": mask},
                            categories={a: tiny_bundle.categories[a] for a in ("faster", "mask")})
        engine = CloudEngine(mixed)
        frame = make_frame(edge_output, 6, tasks=("detect", "segment"))
        with pytest.raises(UnsupportedError, match="need different backbones"):
            engine.process(frame, frame.ByteSize())
        with pytest.raises(FingerprintMismatchError, match="task 'segment'"):
            only_segment = make_frame(edge_output, 7, tasks=("segment",))
            engine.process(only_segment, only_segment.ByteSize())
        # analyze_image runs each backbone once and serves both tasks.
        result = engine.analyze_image(torch.rand(3, 64, 64), ["detect", "segment"])
        assert [r.task for r in result.results] == [pb.DETECT, pb.SEGMENT]


class _Counting(torch.nn.Module):
    """A cloud half that counts its calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


@pytest.fixture(scope="module")
def synthetic_bundle() -> ModelBundle:
    """fpnlink's reference weights at 128 px: the three archs share backbone, RPN and box head."""
    return load_bundle("synthetic", ModelConfig(min_size=128, max_size=128, detections_per_img=5, score_thresh=0.0))


@pytest.fixture(scope="module")
def synthetic_edge(synthetic_bundle) -> EdgeOutput:
    """A synthetic scene whose top detections hold persons and shapes (keypoints for the persons only)."""
    image = to_tensor(render_scene(np.random.default_rng([11, 3]), 128)[0])
    with torch.inference_mode():
        features, image_sizes, original_sizes = synthetic_bundle.edge_half(["detect"])([image])
    return EdgeOutput(features, image_sizes[0], original_sizes[0], synthetic_bundle.backbone_fingerprints["faster"])


def _per_arch_results(bundle: ModelBundle, edge: EdgeOutput, tasks: tuple[str, ...]) -> list[pb.TaskResult]:
    """What the engine answered before the shared pass: one cloud half per task."""
    with torch.inference_mode():
        return [task_result(task, bundle.cloud_half(TASK_ARCH[task])(edge.features, [edge.input_size],
                                                                      [edge.original_size])[0],
                            bundle.categories[TASK_ARCH[task]]) for task in tasks]


class TestSharedPass:
    def test_random_weights_keep_separate_halves(self, engine):
        assert engine.shared_heads is False and engine.shared_groups == []
        assert all(not model.shares_heads_with for model in engine.capabilities().models)

    def test_three_tasks_run_one_pass_with_the_per_arch_results(self, synthetic_bundle, synthetic_edge):
        engine = CloudEngine(synthetic_bundle, {"raw": make_codec("raw")})
        assert engine.shared_heads and engine.shared_groups == [("faster", "mask", "keypoint")]
        sharing = {model.arch: list(model.shares_heads_with) for model in engine.capabilities().models}
        assert sharing == {"faster": ["mask", "keypoint"], "mask": ["faster", "keypoint"],
                           "keypoint": ["faster", "mask"]}
        engine._clouds = {arch: _Counting(half) for arch, half in engine._clouds.items()}
        engine._shared = {key: _Counting(half) for key, half in engine._shared.items()}
        tasks = ("detect", "segment", "keypoints")
        frame = make_frame(synthetic_edge, 1, tasks=tasks)
        result = engine.process(frame, frame.ByteSize())
        assert_same_task_results(list(result.results), _per_arch_results(synthetic_bundle, synthetic_edge, tasks))
        assert engine._shared[frozenset(("faster", "mask", "keypoint"))].calls == 1
        assert sum(half.calls for half in engine._clouds.values()) == 0

        two = make_frame(synthetic_edge, 2, tasks=("keypoints", "detect"))
        result = engine.process(two, two.ByteSize())
        assert_same_task_results(list(result.results),
                             _per_arch_results(synthetic_bundle, synthetic_edge, ("keypoints", "detect")))
        assert engine._shared[frozenset(("faster", "keypoint"))].calls == 1
        one = make_frame(synthetic_edge, 3, tasks=("segment",))
        engine.process(one, one.ByteSize())
        assert engine._clouds["mask"].calls == 1  # one task: its own half

        analyzed = engine.analyze_image(torch.rand(3, 64, 64), list(tasks))
        assert [r.task for r in analyzed.results] == [pb.DETECT, pb.SEGMENT, pb.KEYPOINTS]
        assert engine._shared[frozenset(("faster", "mask", "keypoint"))].calls == 2
