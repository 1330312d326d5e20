"""Task loss of a compressed-feature result against the lossless-feature result (MFIP's comparison).

The lossless output serves as pseudo ground truth, and the loss is ``1 - AP``, where AP is an
AP@[.50:.95]-like score: for each IoU threshold ``t`` in 0.50, 0.55, ..., 0.95, predictions are taken
by descending score and each is matched greedily to the unmatched pseudo-GT object of the SAME label
with the highest similarity ``>= t``; AP is COCO's 101-point interpolated area under the
precision-recall curve; the ten APs are averaged. Classes are pooled into one curve (COCO averages
per category; with a handful of objects per image most categories hold one object, which makes the
per-category mean very noisy for a per-image importance signal).

Similarity per task (all in ``[0, 1]``):

=============  ==========================================================================
``detect``     box IoU
``segment``    mask IoU of the binarised masks (``> 0.5``)
``keypoints``  OKS (COCO's per-keypoint sigmas, object scale = pseudo-GT box area), over the detections
               that have keypoints on both sides
=============  ==========================================================================

An empty pseudo-GT gives AP 1 when the prediction is empty too, else 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..model.keypoint_heads import has_keypoints

IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)
RECALL_POINTS: np.ndarray = np.linspace(0.0, 1.0, 101)
MASK_THRESHOLD = 0.5
COCO_KEYPOINT_SIGMAS: np.ndarray = np.array([
    0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89,
]) / 10.0
DEFAULT_SIGMA = 0.05
"""Per-keypoint sigma when a model does not have COCO's 17 keypoints."""

Detections = dict[str, Tensor]


def box_similarity(pred: Detections, gt: Detections) -> np.ndarray:
    return box_iou(pred["boxes"].float(), gt["boxes"].float()).numpy()


def mask_similarity(pred: Detections, gt: Detections) -> np.ndarray:
    a = (pred["masks"][:, 0] > MASK_THRESHOLD).flatten(1).float()
    b = (gt["masks"][:, 0] > MASK_THRESHOLD).flatten(1).float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter)).numpy()


def keypoint_similarity(pred: Detections, gt: Detections) -> np.ndarray:
    """OKS between every predicted and pseudo-GT pose (all pseudo-GT keypoints count as visible)."""
    p = pred["keypoints"][..., :2].double().numpy()  # [P, K, 2]
    g = gt["keypoints"][..., :2].double().numpy()  # [G, K, 2]
    num = p.shape[1]
    sigmas = COCO_KEYPOINT_SIGMAS if num == len(COCO_KEYPOINT_SIGMAS) else np.full(num, DEFAULT_SIGMA)
    boxes = gt["boxes"].double().numpy()
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)  # [G]
    d2 = ((p[:, None] - g[None]) ** 2).sum(-1)  # [P, G, K]
    e = d2 / ((2 * sigmas) ** 2)[None, None, :] / area[None, :, None] / 2
    return np.exp(-e).mean(-1)


SIMILARITY: dict[str, Callable[[Detections, Detections], np.ndarray]] = {
    "detect": box_similarity,
    "segment": mask_similarity,
    "keypoints": keypoint_similarity,
}


def _average_precision(true_positive: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of a ranked list of TP flags."""
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    valid = index < len(precision)
    return float(np.where(valid, precision[np.minimum(index, len(precision) - 1)], 0.0).sum() / len(RECALL_POINTS))


def _with_keypoints(detections: Detections) -> Detections:
    """The detections a keypoint branch answered (see :func:`~fpnlink.shared.model.keypoint_heads.has_keypoints`)."""
    keep = has_keypoints(detections["keypoints"])
    return {key: value[keep] for key, value in detections.items()}


def pseudo_ap(pred: Detections, gt: Detections, task: str = "detect") -> float:
    """AP@[.50:.95]-like score of ``pred`` against ``gt`` (both torchvision result dicts of one image)."""
    if task not in SIMILARITY:
        raise ValueError(f"task must be one of {list(SIMILARITY)}, got {task!r}")
    if task == "keypoints":
        pred, gt = _with_keypoints(pred), _with_keypoints(gt)
    num_pred, num_gt = len(pred["scores"]), len(gt["scores"])
    if num_gt == 0:
        return 1.0 if num_pred == 0 else 0.0
    if num_pred == 0:
        return 0.0
    order = torch.argsort(pred["scores"], descending=True, stable=True)
    pred = {key: value[order] for key, value in pred.items()}
    sim = SIMILARITY[task](pred, gt)
    sim = np.where(pred["labels"].numpy()[:, None] == gt["labels"].numpy()[None, :], sim, -1.0)
    aps = []
    for threshold in IOU_THRESHOLDS:
        taken = np.zeros(num_gt, dtype=bool)
        hits = np.zeros(num_pred, dtype=bool)
        for i in range(num_pred):
            row = np.where(taken, -1.0, sim[i])
            j = int(np.argmax(row))
            if row[j] >= threshold:
                taken[j] = True
                hits[i] = True
        aps.append(_average_precision(hits, num_gt))
    return float(np.mean(aps))


def task_loss(pred: Detections, gt: Detections, task: str = "detect") -> float:
    """``1 - pseudo_ap``: 0 when the compressed features change nothing, up to 1."""
    return 1.0 - pseudo_ap(pred, gt, task)
