"""The split detector: torchvision ResNet50-FPN R-CNNs cut at the FPN output."""

from .shared_pass import shared_cloud_half, shares_box_heads
from .split import SCALE_NAMES, SCALE_STRIDES, TRANSMITTED_SCALES, CloudHalf, EdgeHalf, recompute_pool, split
from .zoo import ARCHS, TASK_ARCH, TASKS, ModelBundle, ModelConfig, load_bundle

__all__ = [
    "ARCHS", "TASKS", "TASK_ARCH", "SCALE_NAMES", "SCALE_STRIDES", "TRANSMITTED_SCALES",
    "CloudHalf", "EdgeHalf", "ModelBundle", "ModelConfig", "load_bundle", "recompute_pool", "shared_cloud_half",
    "shares_box_heads", "split",
]
