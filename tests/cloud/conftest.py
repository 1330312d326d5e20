"""Cloud fixtures: the edge-side features of one tiny image.

The model bundle is the session-wide ``tiny_bundle`` (random:0, 128 px input) from ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest
import torch
from cloud_helpers import IMAGE_SHAPE, EdgeOutput

from fpnlink.shared.model import ModelBundle


@pytest.fixture(scope="session")
def edge_output(tiny_bundle: ModelBundle) -> EdgeOutput:
    image = torch.rand(IMAGE_SHAPE, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        features, image_sizes, original_sizes = tiny_bundle.edge_half(["detect"])([image])
    return EdgeOutput(features, image_sizes[0], original_sizes[0], tiny_bundle.backbone_fingerprints["faster"])

