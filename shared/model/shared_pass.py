"""One cloud half for several tasks: RPN and box head once, every task's branch on the same detections.

fpnlink bundles (``synthetic``, ``fpnlink train``) train one backbone, one RPN and one box head for all three
tasks, so the Faster, Mask and Keypoint R-CNN of such a bundle detect the same boxes from the same features.
Running three :class:`~fpnlink.shared.model.split.CloudHalf` s repeats the RPN and box head three times; the
shared pass runs them once and attaches the mask and keypoint branches to that one box head, the way
torchvision's ``mask_rcnn.py`` and ``keypoint_rcnn.py`` attach theirs (the keypoint branch on the detections
its model restricts it to, :mod:`.keypoint_heads`)::

    P2..P5 ──> pool ──> RPN ──> box head ──> boxes, labels, scores ──┬──> mask branch ──> masks
                        (the models' own modules, shared, not copied)  └──> keypoint branch ──> keypoints

The seam is the one of ``split.py``: plain tensors in (P2..P5, input and original sizes), one dict per image
out, holding every key the per-task halves would return (``boxes``, ``labels``, ``scores``, ``masks``,
``keypoints``, ``keypoints_scores``). Each key equals the per-task half's output for the same features.

Models whose backbone, RPN or box-head weights or settings differ (torchvision's COCO models) get ``None``:
the caller then keeps one cloud half per model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from .keypoint_heads import KEYPOINT_PARTS, MASK_PARTS, SelectiveKeypointRoIHeads, rebuild_roi_heads
from .split import CloudHalf


def same_weights(first: nn.Module, second: nn.Module) -> bool:
    """Whether two modules hold equal state (same keys, shapes and values); the same module trivially does."""
    if first is second:
        return True
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _transform_settings(model: GeneralizedRCNN) -> tuple:
    t = model.transform
    return (tuple(t.min_size), t.max_size, list(t.image_mean), list(t.image_std), t.size_divisible, t.fixed_size)


def _rpn_settings(model: GeneralizedRCNN) -> tuple:
    rpn = model.rpn
    return (dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n), rpn.nms_thresh, rpn.score_thresh, rpn.min_size,
            rpn.box_coder.weights, rpn.box_coder.bbox_xform_clip)


def _box_settings(model: GeneralizedRCNN) -> tuple:
    heads = model.roi_heads
    pool = heads.box_roi_pool
    return (heads.score_thresh, heads.nms_thresh, heads.detections_per_img, heads.box_coder.weights,
            heads.box_coder.bbox_xform_clip, tuple(pool.featmap_names), pool.output_size, pool.sampling_ratio)


def shares_box_heads(models: Sequence[GeneralizedRCNN]) -> bool:
    """Whether ``models`` have equal transforms, backbones, RPNs and box heads (weights and settings), so that
    they detect the same boxes from the same image. Compares weights: call it once, not per frame."""
    if not models:
        return False
    base = models[0]
    for other in models[1:]:
        if (_transform_settings(base), _rpn_settings(base), _box_settings(base)) != (
                _transform_settings(other), _rpn_settings(other), _box_settings(other)):
            return False
        pairs = ((base.backbone, other.backbone), (base.rpn, other.rpn),
                 (base.roi_heads.box_head, other.roi_heads.box_head),
                 (base.roi_heads.box_predictor, other.roi_heads.box_predictor))
        if not all(same_weights(x, y) for x, y in pairs):
            return False
    return True


def _branch(models: Sequence[GeneralizedRCNN], parts: tuple[str, str, str]) -> RoIHeads | None:
    """The ROI heads holding the one (pool, head, predictor) branch among ``models``; raises if two models hold
    different ones."""
    found = [m.roi_heads for m in models if getattr(m.roi_heads, parts[2]) is not None]
    for other in found[1:]:
        if not all(same_weights(getattr(found[0], p), getattr(other, p)) for p in parts):
            raise ValueError(f"two models carry different {parts[2]} branches")
    return found[0] if found else None


def compose_shared_half(models: Sequence[GeneralizedRCNN]) -> CloudHalf:
    """One cloud half with the first model's RPN and box head and every branch (mask, keypoint) any model has,
    the keypoint branch restricted to the labels its own model restricts it to
    (:class:`~.keypoint_heads.SelectiveKeypointRoIHeads`).

    No check: the caller has established :func:`shares_box_heads` (see :func:`shared_cloud_half`).
    """
    base = models[0]
    mask = _branch(models, MASK_PARTS)
    keypoint = _branch(models, KEYPOINT_PARTS)
    branches = {p: getattr(mask, p) for p in MASK_PARTS} if mask is not None else {}
    if keypoint is not None:
        branches.update({p: getattr(keypoint, p) for p in KEYPOINT_PARTS})
    if isinstance(keypoint, SelectiveKeypointRoIHeads):
        roi_heads = rebuild_roi_heads(base.roi_heads, SelectiveKeypointRoIHeads,
                                      keypoint_labels=keypoint.keypoint_labels, **branches)
    else:
        roi_heads = rebuild_roi_heads(base.roi_heads, **branches)
    return CloudHalf(base.rpn, roi_heads, base.transform).eval()


def shared_cloud_half(models: Sequence[GeneralizedRCNN]) -> CloudHalf | None:
    """One cloud half producing every output of ``models`` at once, or ``None`` when they do not share
    backbone, RPN and box head (or are fewer than two: a single model's own half is then the pass)."""
    if len(models) < 2 or not shares_box_heads(models):
        return None
    try:
        return compose_shared_half(models)
    except ValueError:
        return None
