"""The split model reproduces the monolith; weight sources resolve or fail clearly."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads

from fpnlink.shared.errors import UnsupportedError, WeightsError
from fpnlink.shared.model import (
    ARCHS, TRANSMITTED_SCALES, ModelConfig, load_bundle, recompute_pool, shared_cloud_half, shares_box_heads, split,
)
from fpnlink.shared.model.keypoint_heads import (
    KEYPOINT_PARTS, SelectiveKeypointRoIHeads, has_keypoints, keypoint_labels_of, rebuild_roi_heads,
    select_keypoint_labels,
)
from fpnlink.shared.model.split import CloudHalf
from fpnlink.shared.model.zoo import BUNDLE_FORMAT


class TestSplit:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_halves_reproduce_monolith(self, tiny_bundle, tiny_image, arch):
        model = tiny_bundle.models[arch]
        with torch.inference_mode():
            expected = model([tiny_image])[0]
            edge, cloud = split(model)
            features, image_sizes, original_sizes = edge([tiny_image])
            got = cloud(features, image_sizes, original_sizes)[0]
        assert expected["boxes"].shape[0] > 0, "random weights should still produce detections"
        assert set(got) == set(expected)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)

    def test_edge_never_produces_pool(self, tiny_bundle, tiny_image):
        features, _, _ = tiny_bundle.edge_half(["detect"])([tiny_image])
        assert tuple(features) == TRANSMITTED_SCALES

    def test_pool_is_maxpool_of_p5(self, tiny_bundle, tiny_image):
        model = tiny_bundle.models["faster"]
        with torch.inference_mode():
            images, _ = model.transform([tiny_image])
            full = model.backbone(images.tensors)
        torch.testing.assert_close(recompute_pool(full["3"]), full["pool"], rtol=0, atol=0)


def assert_same_outputs(got: dict, expected: dict, arch: str) -> None:
    """The shared pass gives ``arch``'s own cloud-half output (boxes, scores, keypoints within 1e-4)."""
    assert len(expected["boxes"]) > 0, arch
    torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=0, atol=1e-4)
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=0, atol=1e-4)
    assert torch.equal(got["labels"], expected["labels"]), arch
    if arch == "mask":
        assert torch.equal(got["masks"], expected["masks"])
    if arch == "keypoint":
        torch.testing.assert_close(got["keypoints"], expected["keypoints"], rtol=0, atol=1e-4)
        torch.testing.assert_close(got["keypoints_scores"], expected["keypoints_scores"], rtol=0, atol=1e-4)


class TestSharedPass:
    def test_synthetic_archs_share_backbone_rpn_and_box_head(self, synthetic_bundle):
        assert shares_box_heads([synthetic_bundle.models[a] for a in ARCHS])

    def test_random_archs_do_not(self, tiny_bundle):
        models = [tiny_bundle.models[a] for a in ARCHS]
        assert models[0].backbone is models[1].backbone  # random:SEED ties the backbone only
        assert not shares_box_heads(models) and shared_cloud_half(models) is None

    def test_one_model_needs_no_shared_pass(self, synthetic_bundle):
        assert shared_cloud_half([synthetic_bundle.models["mask"]]) is None

    @pytest.mark.parametrize("archs", [ARCHS, ("faster", "mask"), ("mask", "keypoint"), ("faster", "keypoint")])
    def test_equals_the_per_task_halves(self, synthetic_bundle, tiny_image, archs):
        shared = shared_cloud_half([synthetic_bundle.models[a] for a in archs])
        assert shared is not None
        with torch.inference_mode():
            features, sizes, originals = synthetic_bundle.edge_half(["detect"])([tiny_image])
            got = shared(features, sizes, originals)[0]
            assert ("masks" in got) == ("mask" in archs) and ("keypoints" in got) == ("keypoint" in archs)
            for arch in archs:
                assert_same_outputs(got, synthetic_bundle.cloud_half(arch)(features, sizes, originals)[0], arch)

    def test_random_heads_tied_by_hand_share(self, synthetic_bundle, tiny_image):
        bundle = load_bundle("random:0", synthetic_bundle.config, archs=("faster", "mask"))
        faster, mask = bundle.models["faster"], bundle.models["mask"]
        mask.rpn.load_state_dict(faster.rpn.state_dict())
        mask.roi_heads.box_head.load_state_dict(faster.roi_heads.box_head.state_dict())
        mask.roi_heads.box_predictor.load_state_dict(faster.roi_heads.box_predictor.state_dict())
        shared = shared_cloud_half([faster, mask])
        assert shared is not None
        with torch.inference_mode():
            features, sizes, originals = bundle.edge_half(["detect"])([tiny_image])
            got = shared(features, sizes, originals)[0]
            for arch in ("faster", "mask"):
                assert_same_outputs(got, bundle.cloud_half(arch)(features, sizes, originals)[0], arch)
        mask.roi_heads.score_thresh = 0.5  # equal weights, other settings: separate halves
        assert shared_cloud_half([faster, mask]) is None


class TestKeypointSelection:
    def test_synthetic_keypoint_head_serves_persons(self, synthetic_bundle):
        heads = synthetic_bundle.models["keypoint"].roi_heads
        assert isinstance(heads, SelectiveKeypointRoIHeads)
        assert heads.keypoint_labels == (synthetic_bundle.categories["keypoint"].index("person"),)

    def test_labels_of_categories(self):
        assert keypoint_labels_of(["__background__", "disc", "person"]) == (2,)
        assert keypoint_labels_of(["__background__", "person"]) is None  # COCO: every detection is a person
        assert keypoint_labels_of(["class0", "class1"]) is None

    def test_selected_rows_equal_torchvision_and_others_are_empty(self, synthetic_bundle, tiny_image):
        model = synthetic_bundle.models["keypoint"]
        every_detection = rebuild_roi_heads(model.roi_heads, **{p: getattr(model.roi_heads, p) for p in KEYPOINT_PARTS})
        assert type(every_detection) is RoIHeads
        plain = CloudHalf(model.rpn, every_detection, model.transform)
        with torch.inference_mode():
            features, sizes, originals = synthetic_bundle.edge_half(["keypoints"])([tiny_image])
            expected = plain(features, sizes, originals)[0]
            label = int(expected["labels"][0])
            selective = CloudHalf(model.rpn, select_keypoint_labels(model.roi_heads, [label]), model.transform)
            got = selective(features, sizes, originals)[0]
            none_served = CloudHalf(model.rpn, select_keypoint_labels(model.roi_heads, [10_000]), model.transform)
            empty = none_served(features, sizes, originals)[0]
        chosen = expected["labels"] == label
        assert chosen.any() and not chosen.all(), "the test needs detections on both sides of the selection"
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(got[key], expected[key])
        torch.testing.assert_close(got["keypoints"][chosen], expected["keypoints"][chosen], rtol=0, atol=1e-4)
        torch.testing.assert_close(got["keypoints_scores"][chosen], expected["keypoints_scores"][chosen],
                                   rtol=0, atol=1e-4)
        assert torch.equal(has_keypoints(got["keypoints"]), chosen)
        assert not got["keypoints"][~chosen].any() and not got["keypoints_scores"][~chosen].any()
        assert empty["keypoints"].shape == expected["keypoints"].shape and not empty["keypoints"].any()

    def test_needs_a_keypoint_branch_and_labels(self, tiny_bundle):
        with pytest.raises(ValueError, match="no keypoint branch"):
            select_keypoint_labels(tiny_bundle.models["faster"].roi_heads, [1])
        with pytest.raises(ValueError, match="at least one label"):
            select_keypoint_labels(tiny_bundle.models["keypoint"].roi_heads, [])

    def test_synthetic_split_reproduces_monolith(self, synthetic_bundle, tiny_image):
        model = synthetic_bundle.models["keypoint"]
        with torch.inference_mode():
            expected = model([tiny_image])[0]
            got = synthetic_bundle.cloud_half("keypoint")(*synthetic_bundle.edge_half(["keypoints"])([tiny_image]))[0]
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)


class TestBundle:
    def test_random_weights_are_deterministic_and_untrained(self, tiny_bundle):
        again = load_bundle("random:0", tiny_bundle.config, archs=("faster",))
        assert again.backbone_fingerprints["faster"] == tiny_bundle.backbone_fingerprints["faster"]
        assert not tiny_bundle.trained
        other = load_bundle("random:1", tiny_bundle.config, archs=("faster",))
        assert other.backbone_fingerprints["faster"] != again.backbone_fingerprints["faster"]

    def test_one_backbone_serves_all_tasks(self, tiny_bundle):
        assert len(set(tiny_bundle.backbone_fingerprints.values())) == 1
        assert tiny_bundle.backbone_fingerprint_for(["detect", "segment", "keypoints"])

    def test_fingerprint_depends_on_input_config(self, tiny_bundle):
        wider = load_bundle("random:0", ModelConfig(min_size=160, max_size=160, detections_per_img=5), ("faster",))
        assert wider.backbone_fingerprints["faster"] != tiny_bundle.backbone_fingerprints["faster"]

    def test_unknown_task_is_rejected(self, tiny_bundle):
        with pytest.raises(UnsupportedError, match="subset"):
            tiny_bundle.archs_for(["classify"])

    def test_checkpoint_round_trip(self, tiny_bundle, tmp_path):
        single = tmp_path / "mask.pt"
        torch.save(tiny_bundle.models["mask"].state_dict(), single)
        loaded = load_bundle(str(single), tiny_bundle.config, archs=("mask",))
        assert loaded.backbone_fingerprints["mask"] == tiny_bundle.backbone_fingerprints["mask"]
        assert loaded.trained

        bundle_file = tmp_path / "bundle.pt"
        states = {arch: model.state_dict() for arch, model in tiny_bundle.models.items()}
        torch.save({"format": BUNDLE_FORMAT, "models": states, "meta": {}}, bundle_file)
        loaded = load_bundle(str(bundle_file), tiny_bundle.config)
        assert loaded.head_fingerprints == tiny_bundle.head_fingerprints
        assert loaded.models["faster"].backbone is loaded.models["keypoint"].backbone

    @pytest.mark.parametrize("source, message", [
        ("random:x", "random:SEED"),
        ("/nonexistent/ckpt.pt", "no checkpoint"),
    ])
    def test_bad_sources(self, source, message):
        with pytest.raises(WeightsError, match=message):
            load_bundle(source, ModelConfig(min_size=64, max_size=64), archs=("faster",))

    def test_corrupt_checkpoint(self, tmp_path):
        path = tmp_path / "bad.pt"
        path.write_bytes(b"not a checkpoint")
        with pytest.raises(WeightsError, match="cannot read"):
            load_bundle(str(path), ModelConfig(min_size=64, max_size=64), archs=("faster",))

    def test_coco_offline_names_the_file(self, monkeypatch, tmp_path):
        def offline(url, *args, **kwargs):
            raise urllib.error.URLError("network unreachable")

        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
        monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
        with pytest.raises(WeightsError, match="fasterrcnn_resnet50_fpn_coco"):
            load_bundle("coco", ModelConfig(min_size=64, max_size=64), archs=("faster",))

    def test_bad_config(self):
        with pytest.raises(ValueError, match="min_size"):
            ModelConfig(min_size=10)
