"""Build the three torchvision detectors from a weight source and split them.

Weight sources (``weights`` argument):

- ``coco``: torchvision's DEFAULT COCO weights, downloaded once into torch's hub cache. Offline, a
  :class:`WeightsError` names the file and where to put it.
- ``random:SEED``: deterministic random weights for tests; everything they produce is untrained.
- ``synthetic``: fpnlink's reference weights trained on its synthetic world (see ``fpnlink.shared.model.assets``).
- a path to a checkpoint: either one torchvision detector state dict (the architecture is read off
  its keys) or an fpnlink bundle ``{"format": BUNDLE_FORMAT, "models": {arch: state_dict}, "meta": {...}}``.

The three architectures and the task each serves:

====================  ==========  ===========================================
architecture          task        outputs
====================  ==========  ===========================================
``faster``            detect      boxes, labels, scores
``mask``              segment     + masks
``keypoint``          keypoints   + keypoints, keypoints_scores (17, COCO order)
====================  ==========  ===========================================

A checkpoint's Keypoint R-CNN that detects ``person`` among other categories runs its keypoint head on the
``person`` detections only (the others get zero keypoints; :mod:`.keypoint_heads`).
"""

from __future__ import annotations

import re
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import (
    FasterRCNN_ResNet50_FPN_Weights,
    KeypointRCNN_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    fasterrcnn_resnet50_fpn,
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ..errors import UnsupportedError, WeightsError
from .fingerprint import hash_state
from .keypoint_heads import keypoint_labels_of, select_keypoint_labels
from .split import CloudHalf, EdgeHalf, split

TASKS: tuple[str, ...] = ("detect", "segment", "keypoints")
TASK_ARCH: dict[str, str] = {"detect": "faster", "segment": "mask", "keypoints": "keypoint"}
ARCHS: tuple[str, ...] = ("faster", "mask", "keypoint")
BUNDLE_FORMAT = "fpnlink.bundle/1"

_BUILDERS = {"faster": fasterrcnn_resnet50_fpn, "mask": maskrcnn_resnet50_fpn, "keypoint": keypointrcnn_resnet50_fpn}
_COCO_WEIGHTS = {
    "faster": FasterRCNN_ResNet50_FPN_Weights.DEFAULT,
    "mask": MaskRCNN_ResNet50_FPN_Weights.DEFAULT,
    "keypoint": KeypointRCNN_ResNet50_FPN_Weights.DEFAULT,
}
_COCO_CLASSES = {"faster": 91, "mask": 91, "keypoint": 2}
_RANDOM = re.compile(r"^random:(\d+)$")


@dataclass(frozen=True)
class ModelConfig:
    """Network-input and head settings shared by every architecture of a bundle.

    Args:
        min_size: shorter side after resize (torchvision default 800).
        max_size: cap on the longer side after resize (torchvision default 1333).
        detections_per_img: cap on results per image.
        score_thresh: minimum score of a returned detection.
    """

    min_size: int = 800
    max_size: int = 1333
    detections_per_img: int = 100
    score_thresh: float = 0.05

    def __post_init__(self) -> None:
        if not 32 <= self.min_size <= self.max_size <= 4096:
            raise ValueError(f"need 32 <= min_size <= max_size <= 4096, got {self.min_size}, {self.max_size}")
        if self.detections_per_img < 1:
            raise ValueError(f"detections_per_img must be >= 1, got {self.detections_per_img}")

    def builder_kwargs(self) -> dict[str, Any]:
        return {
            "min_size": self.min_size,
            "max_size": self.max_size,
            "box_detections_per_img": self.detections_per_img,
            "box_score_thresh": self.score_thresh,
        }


@dataclass
class ModelBundle:
    """The detectors built from one weight source, with content fingerprints.

    Attributes:
        weights: the source name, e.g. ``random:0`` or ``coco``.
        trained: False for ``random:SEED``: every output is then labelled untrained.
        models: architecture -> torchvision detector in eval mode.
        categories: architecture -> class names (index = label).
        backbone_fingerprints: architecture -> hash of its transform config + backbone weights.
        backbone_weight_fingerprints: architecture -> hash of its backbone weights alone (what a learned codec
            is trained for: the features' statistics do not depend on the input size).
        head_fingerprints: architecture -> hash of its RPN + ROI head weights.
    """

    weights: str
    trained: bool
    config: ModelConfig
    models: dict[str, GeneralizedRCNN]
    categories: dict[str, list[str]]
    backbone_fingerprints: dict[str, str] = field(default_factory=dict)
    backbone_weight_fingerprints: dict[str, str] = field(default_factory=dict)
    head_fingerprints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for arch, model in self.models.items():
            model.eval()
            self.backbone_fingerprints[arch] = hash_state(model.backbone.state_dict(), _transform_tag(model))
            self.backbone_weight_fingerprints[arch] = hash_state(model.backbone.state_dict())
            heads = {f"rpn.{k}": v for k, v in model.rpn.state_dict().items()}
            heads.update({f"roi.{k}": v for k, v in model.roi_heads.state_dict().items()})
            self.head_fingerprints[arch] = hash_state(heads)

    def archs_for(self, tasks: list[str]) -> list[str]:
        """Architectures that serve ``tasks`` (validated), in task order."""
        unknown = [t for t in tasks if t not in TASK_ARCH]
        if unknown or not tasks:
            raise UnsupportedError(f"tasks must be a non-empty subset of {list(TASKS)}, got {tasks}")
        archs = [TASK_ARCH[t] for t in tasks]
        missing = [a for a in archs if a not in self.models]
        if missing:
            raise UnsupportedError(f"weights {self.weights!r} have no {missing} model")
        return archs

    def backbone_fingerprint_for(self, tasks: list[str]) -> str:
        """The one backbone that serves all ``tasks``; raises if they need different backbones."""
        prints = {self.backbone_fingerprints[a] for a in self.archs_for(tasks)}
        if len(prints) != 1:
            raise UnsupportedError(
                f"weights {self.weights!r}: tasks {tasks} need different backbones; "
                "send one stream per backbone (e.g. detect,segment and keypoints separately)"
            )
        return prints.pop()

    def edge_half(self, tasks: list[str]) -> EdgeHalf:
        """Front half whose features serve every task in ``tasks``."""
        self.backbone_fingerprint_for(tasks)
        edge, _ = split(self.models[self.archs_for(tasks)[0]])
        return edge

    def cloud_half(self, arch: str) -> CloudHalf:
        if arch not in self.models:
            raise UnsupportedError(f"no {arch!r} model in weights {self.weights!r}")
        _, cloud = split(self.models[arch])
        return cloud


def _transform_tag(model: GeneralizedRCNN) -> str:
    """The edge transform's settings (what shapes the features), not head settings such as detections_per_img."""
    t = model.transform
    return (f"transform:min_size={tuple(t.min_size)},max_size={t.max_size},mean={list(t.image_mean)},"
            f"std={list(t.image_std)},size_divisible={t.size_divisible},fixed_size={t.fixed_size}")


def _build(arch: str, num_classes: int, config: ModelConfig, **kwargs: Any) -> GeneralizedRCNN:
    return _BUILDERS[arch](weights=None, weights_backbone=None, num_classes=num_classes,
                           **config.builder_kwargs(), **kwargs)


def _random_bundle(name: str, seed: int, config: ModelConfig, archs: tuple[str, ...]) -> ModelBundle:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = {arch: _build(arch, _COCO_CLASSES[arch], config) for arch in archs}
    shared_backbone = models[archs[0]].backbone
    for model in models.values():
        model.backbone = shared_backbone
    categories = {arch: [f"class{i}" for i in range(_COCO_CLASSES[arch])] for arch in archs}
    return ModelBundle(name, trained=False, config=config, models=models, categories=categories)


def _coco_bundle(config: ModelConfig, archs: tuple[str, ...]) -> ModelBundle:
    models, categories = {}, {}
    for arch in archs:
        enum = _COCO_WEIGHTS[arch]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        try:
            state = enum.get_state_dict(progress=True, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsError(
                f"cannot download COCO weights for {arch}: {exc}. Offline, download {enum.url} "
                f"elsewhere and place it at {cached}"
            ) from exc
        model = _build(arch, len(enum.meta["categories"]), config)
        model.load_state_dict(state)
        models[arch] = model
        categories[arch] = list(enum.meta["categories"])
    return ModelBundle("coco", trained=True, config=config, models=models, categories=categories)


def _infer_arch(state: dict[str, Tensor]) -> str:
    if any(k.startswith("roi_heads.mask_predictor") for k in state):
        return "mask"
    if any(k.startswith("roi_heads.keypoint_predictor") for k in state):
        return "keypoint"
    if "roi_heads.box_predictor.cls_score.weight" in state:
        return "faster"
    raise WeightsError("checkpoint is not a torchvision Faster/Mask/Keypoint R-CNN state dict")


def read_checkpoint(path: Path) -> Any:
    """The object in a torch checkpoint file; :class:`WeightsError` when it is missing or unreadable."""
    if not path.is_file():
        raise WeightsError(f"no checkpoint at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc
    return blob


def _checkpoint_bundle(path: Path, config: ModelConfig, archs: tuple[str, ...], name: str) -> ModelBundle:
    blob = read_checkpoint(path)
    if isinstance(blob, dict) and blob.get("format") == BUNDLE_FORMAT:
        states, meta = blob["models"], blob.get("meta", {})
    elif isinstance(blob, dict):
        states, meta = {_infer_arch(blob): blob}, {}
    else:
        raise WeightsError(f"checkpoint {path} holds {type(blob).__name__}, not a state dict")
    models, categories = {}, {}
    for arch in archs:
        if arch not in states:
            continue
        state = states[arch]
        num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
        extra: dict[str, Any] = {}
        if arch == "keypoint":
            extra["num_keypoints"] = int(state["roi_heads.keypoint_predictor.kps_score_lowres.weight"].shape[1])
        model = _build(arch, num_classes, config, **extra)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"checkpoint {path} does not fit a torchvision {arch} model: {exc}") from exc
        categories[arch] = list(meta.get("categories", {}).get(arch, [f"class{i}" for i in range(num_classes)]))
        if arch == "keypoint" and (labels := keypoint_labels_of(categories[arch])):
            model.roi_heads = select_keypoint_labels(model.roi_heads, labels)
        models[arch] = model
    if not models:
        raise WeightsError(f"checkpoint {path} holds none of {list(archs)}")
    _tie_equal_backbones(models)
    return ModelBundle(name, trained=True, config=config, models=models, categories=categories)


def _tie_equal_backbones(models: dict[str, GeneralizedRCNN]) -> None:
    """Share one backbone module between architectures whose backbone weights are identical."""
    seen: dict[str, torch.nn.Module] = {}
    for model in models.values():
        key = hash_state(model.backbone.state_dict())
        model.backbone = seen.setdefault(key, model.backbone)


def load_bundle(
    weights: str,
    config: ModelConfig | None = None,
    archs: tuple[str, ...] = ARCHS,
) -> ModelBundle:
    """Resolve a weight source into a :class:`ModelBundle` of eval-mode detectors.

    Args:
        weights: ``coco``, ``random:SEED``, ``synthetic`` or a checkpoint path.
        config: network-input and head settings; torchvision's defaults when omitted.
        archs: which architectures to build (a subset of ``faster``, ``mask``, ``keypoint``).
    """
    config = config or ModelConfig()
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        raise ValueError(f"archs must be a non-empty subset of {list(ARCHS)}, got {list(archs)}")
    if match := _RANDOM.match(weights):
        return _random_bundle(weights, int(match.group(1)), config, archs)
    if weights == "coco":
        return _coco_bundle(config, archs)
    if weights == "synthetic":
        from .assets import synthetic_checkpoint

        return _checkpoint_bundle(synthetic_checkpoint(), config, archs, "synthetic")
    if weights.startswith("random"):
        raise WeightsError(f"random weights are named random:SEED with an integer seed, got {weights!r}")
    return _checkpoint_bundle(Path(weights), config, archs, weights)
