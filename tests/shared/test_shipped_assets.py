"""The weights committed to the repository: the ``synthetic`` backbone parts and the learned codecs trained on it."""

from __future__ import annotations

import pytest
import torch

from fpnlink.edge.operating_point import DEFAULT_BUDGET, choose_operating_point
from fpnlink.shared.codec import DEFAULT_LEARNED_CODEC, make_codec
from fpnlink.shared.codec.learned import SYNTHETIC_CHECKPOINT
from fpnlink.shared.codec.xscale import SYNTHETIC_CHECKPOINT as XSCALE_CHECKPOINT
from fpnlink.shared.mfiba import parse_budget, shipped_profile
from fpnlink.shared.model import ModelBundle, ModelConfig, load_bundle
from fpnlink.shared.model.assets import SYNTHETIC_DIR, read_asset

TASKS = ["detect", "segment", "keypoints"]


@pytest.fixture(scope="module")
def codec_meta() -> dict:
    return torch.load(SYNTHETIC_CHECKPOINT, map_location="cpu", weights_only=True)["meta"]


@pytest.fixture(scope="module")
def synthetic(codec_meta: dict) -> ModelBundle:
    size = codec_meta["min_size"]
    return load_bundle("synthetic", ModelConfig(min_size=size, max_size=codec_meta["max_size"]))


def test_synthetic_parts_match_their_manifest() -> None:
    manifest, payload = read_asset(SYNTHETIC_DIR)  # raises WeightsError naming a part whose SHA-256 differs
    assert len(payload) == sum(part["bytes"] for part in manifest["parts"])


def test_synthetic_loads_as_three_models_on_one_backbone(synthetic: ModelBundle) -> None:
    assert synthetic.trained and set(synthetic.models) == {"faster", "mask", "keypoint"}
    assert len(set(synthetic.backbone_fingerprints.values())) == 1


def test_shipped_learned_codec_was_trained_on_the_shipped_backbone(synthetic: ModelBundle, codec_meta: dict) -> None:
    assert codec_meta["weights"] == "synthetic"
    assert codec_meta["backbone_fingerprint"] == synthetic.backbone_fingerprint_for(TASKS)


def test_shipped_xscale_codec_serves_the_shipped_backbone(synthetic: ModelBundle) -> None:
    codec = make_codec(DEFAULT_LEARNED_CODEC)
    assert codec.name == "xscale" and codec.checkpoint == XSCALE_CHECKPOINT
    assert codec.trained_backbone == synthetic.backbone_weight_fingerprints["faster"]
    codec.check_backbone(set(synthetic.backbone_weight_fingerprints.values()))  # raises WeightsError on a mismatch


def test_shipped_mfiba_profile_is_the_default_for_xscale_on_synthetic() -> None:
    codec = make_codec(DEFAULT_LEARNED_CODEC)
    config = ModelConfig(min_size=256, max_size=256)  # the size the synthetic weights are trained and served at
    backbone = load_bundle("synthetic", config).backbone_fingerprint_for(TASKS)
    profile = shipped_profile(codec, backbone)
    assert profile is not None and list(profile.tasks) == TASKS and profile.fast_predictor is not None
    assert profile.calibration["images"] >= 100
    point = choose_operating_point(codec, backbone)  # what `fpnlink-edge run` does with no --phi, --budget, --profile
    assert point.budget == parse_budget(DEFAULT_BUDGET) and point.profile_source == "shipped"
