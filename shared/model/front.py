"""The front half alone: transform + ResNet50 + FPN, built and loaded without any R-CNN head.

An edge only runs the front half, so it need not hold the RPN and ROI heads (about 40% of a Faster R-CNN's
weights, and three sets of them for three tasks). :func:`load_front_half` builds the backbone exactly as
the torchvision builders do (same modules, same order of random draws for ``random:SEED``) and loads only
the ``backbone.*`` weights, so its fingerprints equal :class:`~fpnlink.shared.model.zoo.ModelBundle`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..errors import UnsupportedError, WeightsError
from .fingerprint import hash_state
from .split import EdgeHalf, ImageSize
from .zoo import _RANDOM, ARCHS, BUNDLE_FORMAT, TASK_ARCH, ModelBundle, ModelConfig, load_bundle, read_checkpoint

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
TRAINABLE_LAYERS_UNTRAINED = 5
"""What the torchvision builders use without pretrained weights (every layer trainable: no frozen layers)."""
FrontFn = Callable[[list[Tensor]], tuple[dict[str, Tensor], list[ImageSize], list[ImageSize]]]
"""``images -> (features '0'..'3', input sizes, original sizes)``: :class:`EdgeHalf`'s contract."""


@dataclass
class FrontHalf:
    """What an edge needs to make frames: the front half and its fingerprints.

    Attributes:
        weights: the weight source's name.
        trained: False for ``random:SEED``.
        config: network-input settings.
        archs: the architectures whose backbone this is.
        edge: the front half (an :class:`EdgeHalf`, or another backend with its contract).
        backbone_fingerprint: transform settings + backbone weights (what the cloud checks).
        backbone_weight_fingerprint: backbone weights alone (what a learned codec is trained for).
    """

    weights: str
    trained: bool
    config: ModelConfig
    archs: tuple[str, ...]
    edge: FrontFn
    backbone_fingerprint: str
    backbone_weight_fingerprint: str

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, tasks: list[str]) -> FrontHalf:
        """The front half of a whole bundle (heads loaded: full MFIP, benchmarks)."""
        arch = bundle.archs_for(tasks)[0]
        return cls(bundle.weights, bundle.trained, bundle.config, tuple(bundle.archs_for(tasks)),
                   bundle.edge_half(tasks).eval(), bundle.backbone_fingerprint_for(tasks),
                   bundle.backbone_weight_fingerprints[arch])

    def check_tasks(self, tasks: list[str]) -> None:
        """Raise :class:`UnsupportedError` unless every task's architecture shares this backbone."""
        unknown = [t for t in tasks if t not in TASK_ARCH]
        if unknown or not tasks:
            raise UnsupportedError(f"tasks must be a non-empty subset of {list(TASK_ARCH)}, got {tasks}")
        missing = [TASK_ARCH[t] for t in tasks if TASK_ARCH[t] not in self.archs]
        if missing:
            raise UnsupportedError(f"this front half serves {list(self.archs)}, not {missing}")


def build_transform(config: ModelConfig) -> GeneralizedRCNNTransform:
    """The detectors' input transform (normalise, resize, pad to 32) for ``config``."""
    return GeneralizedRCNNTransform(config.min_size, config.max_size, list(IMAGE_MEAN), list(IMAGE_STD))


def transform_tag(transform: GeneralizedRCNNTransform) -> str:
    """The transform settings that shape the features (part of the backbone fingerprint)."""
    t = transform
    return (f"transform:min_size={tuple(t.min_size)},max_size={t.max_size},mean={list(t.image_mean)},"
            f"std={list(t.image_std)},size_divisible={t.size_divisible},fixed_size={t.fixed_size}")


def build_backbone() -> nn.Module:
    """ResNet50 + FPN as ``fasterrcnn/maskrcnn/keypointrcnn_resnet50_fpn(weights=None)`` build it."""
    return _resnet_fpn_extractor(resnet50(weights=None, norm_layer=nn.BatchNorm2d), TRAINABLE_LAYERS_UNTRAINED)


def _checkpoint_backbone(path: Path, archs: tuple[str, ...]) -> dict[str, Tensor]:
    blob = read_checkpoint(path)
    if isinstance(blob, dict) and blob.get("format") == BUNDLE_FORMAT:
        states = blob["models"]
        arch = next((a for a in archs if a in states), None)
        if arch is None:
            raise WeightsError(f"checkpoint {path} holds none of {list(archs)}")
        state = states[arch]
    elif isinstance(blob, dict):
        state = blob
    else:
        raise WeightsError(f"checkpoint {path} holds {type(blob).__name__}, not a state dict")
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise WeightsError(f"checkpoint {path} has no backbone.* weights")
    return backbone


def load_front_half(weights: str, config: ModelConfig | None = None, archs: tuple[str, ...] = ("faster",),
                    ) -> FrontHalf:
    """Build the front half of ``weights`` without any head (see the module docstring).

    Args:
        weights: ``random:SEED``, ``synthetic``, ``coco`` or a checkpoint path, as for :func:`load_bundle`.
        config: network-input settings.
        archs: the architectures the frames serve (their backbone must be one: it is in every source here).

    Raises:
        WeightsError: the weights cannot be resolved or do not fit.
    """
    config = config or ModelConfig()
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        raise ValueError(f"archs must be a non-empty subset of {list(ARCHS)}, got {list(archs)}")
    transform = build_transform(config)
    if match := _RANDOM.match(weights):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(match.group(1)))
            backbone = build_backbone()  # the builders draw the backbone first: same weights
        trained = False
    elif weights == "coco":
        # The COCO files hold whole detectors; their backbones differ per task, so this one is loaded whole.
        bundle = load_bundle("coco", config, archs=archs)
        return FrontHalf.from_bundle(bundle, [t for t, a in TASK_ARCH.items() if a in archs])
    else:
        if weights == "synthetic":
            from .assets import synthetic_checkpoint

            path = synthetic_checkpoint()
        elif weights.startswith("random"):
            raise WeightsError(f"random weights are named random:SEED with an integer seed, got {weights!r}")
        else:
            path = Path(weights)
        backbone = build_backbone()
        try:
            backbone.load_state_dict(_checkpoint_backbone(path, archs))
        except RuntimeError as exc:
            raise WeightsError(f"checkpoint {path} does not fit a ResNet50-FPN backbone: {exc}") from exc
        trained = True
    backbone.eval()
    state = backbone.state_dict()
    return FrontHalf(weights, trained, config, archs, EdgeHalf(transform, backbone).eval(),
                     hash_state(state, transform_tag(transform)), hash_state(state))
