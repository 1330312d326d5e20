"""Evaluation metrics of split inference: COCO AP of the three tasks, and the rate each frame costs.

AP::

    cloud halves ──> detections in ORIGINAL image coordinates (CloudHalf postprocesses)
        faster   ──> boxes             ──> COCOeval "bbox"       ──> box AP
        mask     ──> masks > 0.5 -> RLE ──> COCOeval "segm"       ──> mask AP
        keypoint ──> 17 keypoints       ──> COCOeval "keypoints"  ──> keypoint AP (OKS with the dataset's sigmas)

AP is COCO's AP@[.5:.95] (``stats[0]``), AP50 beside it. It is ``None`` where the images hold no ground
truth of that task (COCOeval's -1), and 0 where ground truth exists but nothing was detected.

Rate: ``bpp = frame_bytes * 8 / (H * W)`` with ``H x W`` the ORIGINAL image and ``frame_bytes`` the
serialized ``FeatureFrame`` (header, ids, fingerprints, per-scale shapes and payloads: every byte that
crosses the wire); ``kbps = bytes_per_frame * 8 * fps / 1000``.

Datasets (:func:`load_dataset`):

- ``fpnlink data synth`` output: ``DIR/annotations/{split}.json`` + ``DIR/images/{split}/``;
- COCO 2017 val: ``DIR/annotations/instances_val2017.json`` (box, mask) +
  ``DIR/annotations/person_keypoints_val2017.json`` (keypoints) + ``DIR/val2017/``.

In both, a model's label IS the COCO category id (torchvision's COCO heads use the 91-id table; the
synthetic world numbers its categories 1..K), so no label mapping is needed.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from ..shared.imageio import decode_array, to_tensor
from ..shared.wire.convert import MASK_THRESHOLD
from .synth import KEYPOINTS, PERSON

ARCH_IOU_TYPE: dict[str, str] = {"faster": "bbox", "mask": "segm", "keypoint": "keypoints"}
ARCH_METRIC: dict[str, str] = {"faster": "box", "mask": "mask", "keypoint": "keypoint"}
"""Architecture -> the AP it is scored on (``box``, ``mask``, ``keypoint``)."""
METRICS: tuple[str, ...] = ("box", "mask", "keypoint")
COCO_KEYPOINT_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
) / 10.0
"""Per-keypoint OKS sigmas of COCO's person (nose ... right_ankle), as in pycocotools' ``Params``."""
COCO_INSTANCES = "instances_val2017.json"
COCO_KEYPOINTS = "person_keypoints_val2017.json"
COCO_IMAGES = "val2017"


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@dataclass
class EvalDataset:
    """Ground truth and images of one evaluation split.

    Attributes:
        kind: ``synthetic`` or ``coco``.
        gt: COCOeval iou type (``bbox``, ``segm``, ``keypoints``) -> ground truth.
        image_ids: the images evaluated, in order.
        image_dir: where ``file_name`` of each image lies.
        person_category: COCO category id of ``person`` (the keypoint task's only category).
        keypoint_sigmas: OKS sigma per keypoint of ``person``.
    """

    root: Path
    split: str
    kind: str
    gt: dict[str, COCO]
    image_ids: list[int]
    image_dir: Path
    person_category: int
    keypoint_sigmas: np.ndarray

    def size(self, image_id: int) -> tuple[int, int]:
        info = self.gt["bbox"].imgs[image_id]
        return int(info["height"]), int(info["width"])

    def image_array(self, image_id: int) -> np.ndarray:
        """The image as ``[H, W, 3]`` uint8 RGB."""
        path = self.image_dir / self.gt["bbox"].imgs[image_id]["file_name"]
        return decode_array(path)

    def image(self, image_id: int) -> Tensor:
        """The image as ``[3, H, W]`` float in [0, 1]."""
        return to_tensor(self.image_array(image_id))

    def subset(self, image_ids: list[int]) -> EvalDataset:
        unknown = sorted(set(image_ids) - set(self.gt["bbox"].imgs))
        if unknown:
            raise ValueError(f"image ids {unknown[:5]} are not in {self.root} ({self.split})")
        return EvalDataset(self.root, self.split, self.kind, self.gt, list(image_ids), self.image_dir,
                           self.person_category, self.keypoint_sigmas)


def dataset_kind(root: Path) -> str:
    """``coco`` for a COCO 2017 folder, ``synthetic`` for an ``fpnlink data synth`` folder."""
    return "coco" if (Path(root) / "annotations" / COCO_INSTANCES).is_file() else "synthetic"


def load_dataset(root: str | Path, split: str = "val", limit: int | None = None) -> EvalDataset:
    """Load a split's ground truth (see the module docstring for the layouts).

    Args:
        root: the dataset folder.
        split: ``train``, ``val`` or ``test`` for synthetic data; COCO folders only hold ``val``.
        limit: evaluate only the first ``limit`` images (by image id).

    Raises:
        FileNotFoundError: the annotations are missing (the message names the files looked for).
        ValueError: no ``person`` category, or keypoints that are not COCO's 17.
    """
    root = Path(root)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if dataset_kind(root) == "coco":
        if split != "val":
            raise ValueError(f"a COCO folder is evaluated on val2017, not {split!r}")
        keypoints_path = root / "annotations" / COCO_KEYPOINTS
        if not keypoints_path.is_file():
            raise FileNotFoundError(f"COCO keypoint annotations missing: {keypoints_path}")
        instances = _quiet_coco(root / "annotations" / COCO_INSTANCES)
        gt = {"bbox": instances, "segm": instances, "keypoints": _quiet_coco(keypoints_path)}
        kind, image_dir = "coco", root / COCO_IMAGES
    else:
        ann = root / "annotations" / f"{split}.json"
        if not ann.is_file():
            raise FileNotFoundError(f"no annotations at {ann} (nor a COCO folder: "
                                    f"{root / 'annotations' / COCO_INSTANCES}); generate synthetic data with "
                                    f"`fpnlink data synth --out {root}`")
        coco = _quiet_coco(ann)
        gt = {"bbox": coco, "segm": coco, "keypoints": coco}
        kind, image_dir = "synthetic", root / "images" / split
    persons = [c for c in gt["keypoints"].loadCats(gt["keypoints"].getCatIds()) if c["name"] == PERSON]
    if not persons:
        raise ValueError(f"{root}: no {PERSON!r} category, so keypoints cannot be scored")
    names = list(persons[0].get("keypoints", []))
    if names != list(KEYPOINTS):
        raise ValueError(f"{root}: person keypoints {names} are not COCO's 17; their OKS sigmas are unknown")
    image_ids = sorted(gt["bbox"].getImgIds())
    if limit is not None:
        image_ids = image_ids[:limit]
    return EvalDataset(root, split, kind, gt, image_ids, image_dir, int(persons[0]["id"]), COCO_KEYPOINT_SIGMAS)


def coco_results(arch: str, output: dict[str, Tensor], image_id: int, person_category: int) -> list[dict[str, Any]]:
    """One image's torchvision output as COCO result dicts for ``arch``'s iou type.

    Keypoint results keep only ``person`` detections (the synthetic keypoint head also labels shapes).
    """
    boxes = output["boxes"].detach().cpu()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().tolist()
    dets = []
    for i, label in enumerate(labels):
        if arch == "keypoint" and label != person_category:
            continue
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        det: dict[str, Any] = {"image_id": image_id, "category_id": int(label), "score": float(scores[i]),
                               "bbox": [x0, y0, x1 - x0, y1 - y0]}
        if arch == "mask":
            binary = (output["masks"][i, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(binary))
            det["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        elif arch == "keypoint":
            det["keypoints"] = output["keypoints"][i].detach().cpu().reshape(-1).tolist()
        dets.append(det)
    return dets


def coco_ap(coco: COCO, dets: list[dict[str, Any]], iou_type: str, image_ids: list[int],
            cat_ids: list[int] | None = None, kpt_sigmas: np.ndarray | None = None,
            ) -> tuple[float | None, float | None]:
    """COCO ``(AP@[.5:.95], AP50)`` of ``dets`` on ``image_ids``; ``(None, None)`` without ground truth."""
    if iou_type not in ARCH_IOU_TYPE.values():
        raise ValueError(f"iou_type must be one of {list(ARCH_IOU_TYPE.values())}, got {iou_type!r}")
    gt_ids = coco.getAnnIds(imgIds=image_ids, catIds=cat_ids or [])
    if not any(not a.get("iscrowd", 0) and (iou_type != "keypoints" or a.get("num_keypoints", 0) > 0)
               for a in coco.loadAnns(gt_ids)):
        return None, None
    if not dets:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(dets), iou_type)
        evaluator.params.imgIds = list(image_ids)
        if cat_ids is not None:
            evaluator.params.catIds = list(cat_ids)
        if iou_type == "keypoints" and kpt_sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(kpt_sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50 = float(evaluator.stats[0]), float(evaluator.stats[1])
    return (ap if ap >= 0 else None), (ap50 if ap50 >= 0 else None)


class ApAccumulator:
    """Collects detections per variant (any hashable key) and scores each with COCOeval.

    Args:
        dataset: ground truth and the image ids to score on.
    """

    def __init__(self, dataset: EvalDataset) -> None:
        self.dataset = dataset
        self._dets: dict[tuple[Hashable, str], list[dict[str, Any]]] = defaultdict(list)
        self._keys: dict[Hashable, set[str]] = defaultdict(set)

    def add(self, key: Hashable, arch: str, image_id: int, output: dict[str, Tensor]) -> None:
        """Record one image's ``arch`` output under ``key``."""
        if arch not in ARCH_IOU_TYPE:
            raise ValueError(f"arch must be one of {list(ARCH_IOU_TYPE)}, got {arch!r}")
        self._keys[key].add(arch)
        self._dets[key, arch].extend(coco_results(arch, output, image_id, self.dataset.person_category))

    def keys(self) -> list[Hashable]:
        return list(self._keys)

    def score(self, key: Hashable) -> dict[str, dict[str, float | None]]:
        """``{"box"|"mask"|"keypoint": {"ap", "ap50"}}`` for the architectures recorded under ``key``."""
        out = {}
        for arch in sorted(self._keys[key], key=list(ARCH_IOU_TYPE).index):
            iou_type = ARCH_IOU_TYPE[arch]
            cats = [self.dataset.person_category] if iou_type == "keypoints" else None
            ap, ap50 = coco_ap(self.dataset.gt[iou_type], self._dets[key, arch], iou_type, self.dataset.image_ids,
                               cats, self.dataset.keypoint_sigmas)
            out[ARCH_METRIC[arch]] = {"ap": ap, "ap50": ap50}
        return out


def bits_per_pixel(frame_bytes: int, original_size: tuple[int, int]) -> float:
    """``frame_bytes * 8 / (H * W)`` of the ORIGINAL image ``(H, W)``."""
    height, width = original_size
    if frame_bytes < 0 or height < 1 or width < 1:
        raise ValueError(f"need frame_bytes >= 0 and a positive image size, got {frame_bytes}, {original_size}")
    return frame_bytes * 8 / (height * width)


def kbps(bytes_per_frame: float, fps: float) -> float:
    """Bit rate in kbit/s of a stream of ``bytes_per_frame`` at ``fps`` frames per second."""
    if bytes_per_frame < 0 or not fps > 0:
        raise ValueError(f"need bytes_per_frame >= 0 and fps > 0, got {bytes_per_frame}, {fps}")
    return bytes_per_frame * 8 * fps / 1000
