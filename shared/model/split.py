"""Split a torchvision GeneralizedRCNN into an edge front half and a cloud back half.

The two halves are composed from the monolith's own parts (never a fork), and their seam is plain
tensors: the FPN maps P2..P5 keyed ``'0'..'3'``, plus the network-input and original image sizes::

      edge                                   |            cloud
    images ──> transform ──> body ──> FPN ──>| P2..P5 ──> pool = maxpool(P5) ──> RPN ──> ROI heads
              (normalise,            ('pool'  |                                          │
               resize, pad)          dropped) |           postprocess to original size <─┘

'pool' is ``max_pool2d(P5, 1, 2)`` (torchvision's LastLevelMaxPool), so the cloud recomputes it from P5
and it is never transmitted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

TRANSMITTED_SCALES: tuple[str, ...] = ("0", "1", "2", "3")
"""FPN keys sent over the wire: P2..P5 (strides 4, 8, 16, 32)."""
SCALE_STRIDES: dict[str, int] = {"0": 4, "1": 8, "2": 16, "3": 32}
SCALE_NAMES: dict[str, str] = {"0": "P2", "1": "P3", "2": "P4", "3": "P5"}
PADDED_STRIDE = 4
"""The padded network input is exactly ``PADDED_STRIDE`` times P2's spatial size (size_divisible=32)."""

ImageSize = tuple[int, int]


def recompute_pool(p5: Tensor) -> Tensor:
    """Rebuild torchvision's 'pool' level (LastLevelMaxPool) from P5."""
    return F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)


class EdgeHalf(nn.Module):
    """Transform + backbone body + FPN: images in, P2..P5 out ('pool' is never produced for the wire).

    Args:
        transform: the monolith's GeneralizedRCNNTransform (normalise, resize, pad).
        backbone: the monolith's BackboneWithFPN.
    """

    def __init__(self, transform: GeneralizedRCNNTransform, backbone: nn.Module) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone

    def forward(self, images: list[Tensor]) -> tuple[dict[str, Tensor], list[ImageSize], list[ImageSize]]:
        """Run the front half.

        Args:
            images: float tensors [3, H, W] in [0, 1], one per image.

        Returns:
            ``(features, image_sizes, original_sizes)``: features maps ``'0'..'3'`` to [N, 256, h, w];
            image_sizes are the resized (unpadded) network-input sizes; original_sizes the input sizes.
        """
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        transmitted = {name: features[name] for name in TRANSMITTED_SCALES}
        image_sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
        return transmitted, image_sizes, original_sizes


class CloudHalf(nn.Module):
    """'pool' from P5, then RPN, ROI heads and postprocess back to original-image coordinates.

    Args:
        rpn: the monolith's RegionProposalNetwork.
        roi_heads: the monolith's RoIHeads (box, plus mask or keypoint branches when present).
        transform: the monolith's transform; only its ``postprocess`` is used here.
    """

    def __init__(self, rpn: nn.Module, roi_heads: nn.Module, transform: GeneralizedRCNNTransform) -> None:
        super().__init__()
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.transform = transform

    def forward(
        self,
        features: dict[str, Tensor],
        image_sizes: list[ImageSize],
        original_sizes: list[ImageSize],
    ) -> list[dict[str, Tensor]]:
        """Run the back half.

        Args:
            features: ``'0'..'3'`` -> [N, 256, h, w] (decoded P2..P5); 'pool' must not be present.
            image_sizes: resized network-input sizes, one per image.
            original_sizes: sizes to map results back to, one per image.

        Returns:
            One dict per image with ``boxes`` [K, 4], ``labels`` [K], ``scores`` [K], and ``masks``
            [K, 1, H, W] or ``keypoints`` [K, 17, 3] + ``keypoints_scores`` when the heads have them.
        """
        p2 = features["0"]
        pyramid = dict(features)
        pyramid["pool"] = recompute_pool(features["3"])
        padded_shape = (p2.shape[0], 3, p2.shape[-2] * PADDED_STRIDE, p2.shape[-1] * PADDED_STRIDE)
        # The RPN's anchor generator reads only the padded batch's shape, so a zero-stride view suffices.
        padded = p2.new_zeros(()).expand(padded_shape)
        image_list = ImageList(padded, list(image_sizes))
        proposals, _ = self.rpn(image_list, pyramid)
        detections, _ = self.roi_heads(pyramid, proposals, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, list(original_sizes))


def split(model: GeneralizedRCNN) -> tuple[EdgeHalf, CloudHalf]:
    """Compose the two halves from a torchvision detector's own modules (shared, not copied)."""
    return EdgeHalf(model.transform, model.backbone), CloudHalf(model.rpn, model.roi_heads, model.transform)


@torch.inference_mode()
def run_monolith(model: GeneralizedRCNN, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Reference: the unsplit torchvision model in eval mode."""
    return model.eval()(images)
