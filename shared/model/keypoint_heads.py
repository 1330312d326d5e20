"""ROI heads whose keypoint branch, at inference, runs only on the detections of its own categories.

A Keypoint R-CNN whose box head detects several categories (fpnlink bundles: five shapes and ``person``) has a
keypoint head trained on one of them: ``person`` poses are all it ever saw. torchvision runs that head, its
costliest branch (eight 512-channel convs per box), on every detection anyway. Here it runs on the detections
of ``keypoint_labels`` only; the others get all-zero keypoints and scores, visibility 0 being COCO's "no
keypoint"::

    box head ──> detections ──┬──> mask branch (all)                         ──> masks
                              └──> keypoint branch (labels in keypoint_labels) ──> keypoints, zeros elsewhere

Box and mask outputs are torchvision's, op for op; training is torchvision's unchanged. For COCO's Keypoint
R-CNN, whose only category is ``person``, the selection keeps every detection.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, keypointrcnn_inference, maskrcnn_inference

KEYPOINT_CATEGORY = "person"
"""The category fpnlink's keypoint heads are trained on."""
MASK_PARTS: tuple[str, str, str] = ("mask_roi_pool", "mask_head", "mask_predictor")
KEYPOINT_PARTS: tuple[str, str, str] = ("keypoint_roi_pool", "keypoint_head", "keypoint_predictor")


def rebuild_roi_heads(template: RoIHeads, cls: type[RoIHeads] = RoIHeads, **branches: object) -> RoIHeads:
    """A new ``cls`` with ``template``'s box head, settings and train/eval mode (modules shared, not copied) and
    the given mask and keypoint branches (``mask_roi_pool=...``, ``keypoint_head=...``; absent ones are ``None``)."""
    heads = cls(
        template.box_roi_pool, template.box_head, template.box_predictor,
        template.proposal_matcher.high_threshold, template.proposal_matcher.low_threshold,
        template.fg_bg_sampler.batch_size_per_image, template.fg_bg_sampler.positive_fraction,
        template.box_coder.weights, template.score_thresh, template.nms_thresh, template.detections_per_img,
        **branches,
    )
    return heads.train(template.training)


class SelectiveKeypointRoIHeads(RoIHeads):
    """torchvision's RoIHeads with the keypoint branch restricted to ``keypoint_labels`` at inference.

    Args:
        *args, **kwargs: :class:`RoIHeads`' own (see :func:`rebuild_roi_heads`, :func:`select_keypoint_labels`).
        keypoint_labels: the labels whose detections get keypoints.
    """

    def __init__(self, *args: object, keypoint_labels: Sequence[int], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if not keypoint_labels:
            raise ValueError("keypoint_labels must name at least one label")
        self.keypoint_labels = tuple(int(label) for label in keypoint_labels)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training or not self.has_keypoint():
            return super().forward(features, proposals, image_shapes, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        result = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        if self.has_mask():
            mask_features = self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))
            for probs, item in zip(maskrcnn_inference(self.mask_predictor(mask_features), labels), result):
                item["masks"] = probs
        self._keypoints(features, result, image_shapes)
        return result, {}

    def _keypoints(self, features: dict[str, Tensor], result: list[dict[str, Tensor]],
                   image_shapes: list[tuple[int, int]]) -> None:
        wanted = torch.tensor(self.keypoint_labels, dtype=torch.int64)
        chosen = [torch.isin(item["labels"], wanted.to(item["labels"].device)) for item in result]
        boxes = [item["boxes"][keep] for item, keep in zip(result, chosen)]
        head_features = self.keypoint_head(self.keypoint_roi_pool(features, boxes, image_shapes))
        keypoints, keypoint_scores = keypointrcnn_inference(self.keypoint_predictor(head_features), boxes)
        for item, keep, points, point_scores in zip(result, chosen, keypoints, keypoint_scores):
            item["keypoints"] = points.new_zeros((len(keep), *points.shape[1:]))
            item["keypoints"][keep] = points
            item["keypoints_scores"] = point_scores.new_zeros((len(keep), *point_scores.shape[1:]))
            item["keypoints_scores"][keep] = point_scores


def select_keypoint_labels(heads: RoIHeads, keypoint_labels: Sequence[int]) -> RoIHeads:
    """``heads`` (modules shared) with its keypoint branch restricted to ``keypoint_labels``."""
    if not heads.has_keypoint():
        raise ValueError("these ROI heads have no keypoint branch to restrict")
    branches = {part: getattr(heads, part) for part in MASK_PARTS + KEYPOINT_PARTS}
    return rebuild_roi_heads(heads, SelectiveKeypointRoIHeads, keypoint_labels=keypoint_labels, **branches)


def keypoint_labels_of(categories: Sequence[str]) -> tuple[int, ...] | None:
    """The labels a keypoint head trained on :data:`KEYPOINT_CATEGORY` serves, or ``None`` when the selection
    would change nothing (no such category, or it is the only one besides the background)."""
    labels = tuple(i for i, name in enumerate(categories) if name == KEYPOINT_CATEGORY)
    others = [name for name in categories if name not in (KEYPOINT_CATEGORY, "__background__")]
    return labels if labels and others else None


def has_keypoints(keypoints: Tensor) -> Tensor:
    """``[N, K, 3]`` keypoints -> ``[N]`` bool: the detections with any visible keypoint (the rows a restricted
    keypoint branch filled)."""
    return keypoints[..., 2].gt(0).any(dim=-1)
