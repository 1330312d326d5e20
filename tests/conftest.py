"""Shared fixtures: one tiny random-weight bundle per session (CPU, 128 px network input)."""

from __future__ import annotations

import pytest
import torch

from fpnlink.shared.model import ModelBundle, ModelConfig, load_bundle

TINY_CONFIG = ModelConfig(min_size=128, max_size=128, detections_per_img=5)


@pytest.fixture(scope="session")
def tiny_bundle() -> ModelBundle:
    torch.set_num_threads(2)
    return load_bundle("random:0", TINY_CONFIG)


@pytest.fixture
def tiny_image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.rand(3, 96, 128, generator=generator)
