"""Fixtures of the shared-package tests."""

from __future__ import annotations

import pytest

from fpnlink.shared.model import ModelBundle, ModelConfig, load_bundle

SHARED_CONFIG = ModelConfig(min_size=128, max_size=128, detections_per_img=5, score_thresh=0.0)
"""Tiny input, and every top-5 detection kept so that the comparisons have boxes to compare."""


@pytest.fixture(scope="module")
def synthetic_bundle() -> ModelBundle:
    """fpnlink's reference weights: one backbone, RPN and box head shared by the three tasks."""
    return load_bundle("synthetic", SHARED_CONFIG)
