"""Tests for fpnlink.tools.evaluation: dataset layouts, COCO AP of the three tasks, rate metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from fpnlink.tools.evaluation import (
    COCO_KEYPOINT_SIGMAS, ApAccumulator, EvalDataset, bits_per_pixel, coco_ap, dataset_kind, kbps, load_dataset,
)
from fpnlink.tools.synth import generate_dataset

SIZE = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, n=10, size=SIZE, seed=3, val_fraction=0.5, test_fraction=0.0, progress=False)
    return out


@pytest.fixture(scope="module")
def coco_folder(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic val split laid out as COCO 2017 (instances + person_keypoints + val2017/)."""
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    val = json.loads((synth / "annotations" / "val.json").read_text())
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    person = [c for c in val["categories"] if c["name"] == "person"]
    keypoints = {**val, "categories": person,
                 "annotations": [a for a in val["annotations"] if a["category_id"] == person[0]["id"]]}
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(keypoints))
    shutil.copytree(synth / "images" / "val", root / "val2017")
    return root


def perfect_output(dataset: EvalDataset, image_id: int, arch: str) -> dict[str, torch.Tensor]:
    """The ground truth of one image as a torchvision output dict (score 1)."""
    anns = dataset.gt["bbox"].loadAnns(dataset.gt["bbox"].getAnnIds(imgIds=[image_id]))
    if arch == "keypoint":
        anns = [a for a in anns if a["category_id"] == dataset.person_category]
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=torch.float32).reshape(-1, 4)
    out = {"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
           "scores": torch.ones(len(anns))}
    if arch == "mask":
        masks = [mask_utils.decode(a["segmentation"]) for a in anns]
        out["masks"] = torch.from_numpy(np.stack(masks)).float()[:, None] if masks else torch.zeros(0, 1, SIZE, SIZE)
    if arch == "keypoint":
        out["keypoints"] = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, 17, 3)
    return out


class TestLoadDataset:
    def test_synthetic_layout(self, synth: Path) -> None:
        dataset = load_dataset(synth, "val", limit=3)
        assert dataset.kind == "synthetic" and dataset_kind(synth) == "synthetic"
        assert dataset.image_ids == sorted(dataset.gt["bbox"].getImgIds())[:3]
        image = dataset.image(dataset.image_ids[0])
        assert image.shape == (3, SIZE, SIZE) and 0 <= image.min() and image.max() <= 1
        assert dataset.size(dataset.image_ids[0]) == (SIZE, SIZE)
        np.testing.assert_array_equal(dataset.keypoint_sigmas, COCO_KEYPOINT_SIGMAS)

    def test_coco_layout(self, coco_folder: Path) -> None:
        dataset = load_dataset(coco_folder)
        assert dataset.kind == "coco" and dataset.gt["keypoints"] is not dataset.gt["bbox"]
        assert dataset.image(dataset.image_ids[-1]).shape == (3, SIZE, SIZE)

    def test_missing_annotations_name_the_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="val.json"):
            load_dataset(tmp_path)

    def test_coco_has_only_val(self, coco_folder: Path) -> None:
        with pytest.raises(ValueError, match="val2017"):
            load_dataset(coco_folder, "train")

    def test_bad_limit(self, synth: Path) -> None:
        with pytest.raises(ValueError, match="limit"):
            load_dataset(synth, limit=0)


class TestCocoAp:
    @pytest.mark.parametrize("layout", ["synthetic", "coco"])
    def test_ground_truth_scores_one(self, layout: str, synth: Path, coco_folder: Path) -> None:
        dataset = load_dataset(synth if layout == "synthetic" else coco_folder, "val")
        scores = ApAccumulator(dataset)
        for image_id in dataset.image_ids:
            for arch in ("faster", "mask", "keypoint"):
                scores.add("gt", arch, image_id, perfect_output(dataset, image_id, arch))
        result = scores.score("gt")
        assert set(result) == {"box", "mask", "keypoint"}
        for metric in ("box", "mask", "keypoint"):  # seed 3's val split holds persons with keypoints
            assert result[metric]["ap"] == pytest.approx(1.0)

    def test_nothing_detected_scores_zero(self, synth: Path) -> None:
        dataset = load_dataset(synth, "val")
        assert coco_ap(dataset.gt["bbox"], [], "bbox", dataset.image_ids) == (0.0, 0.0)

    def test_no_ground_truth_is_none(self, synth: Path) -> None:
        dataset = load_dataset(synth, "val")
        missing_category = 99
        assert coco_ap(dataset.gt["bbox"], [], "bbox", dataset.image_ids, [missing_category]) == (None, None)

    def test_unknown_iou_type(self, synth: Path) -> None:
        dataset = load_dataset(synth, "val")
        with pytest.raises(ValueError, match="iou_type"):
            coco_ap(dataset.gt["bbox"], [], "boxes", dataset.image_ids)

    def test_unknown_arch(self, synth: Path) -> None:
        dataset = load_dataset(synth, "val")
        with pytest.raises(ValueError, match="arch"):
            ApAccumulator(dataset).add("k", "retina", dataset.image_ids[0], {})


class TestRate:
    def test_bits_per_pixel_uses_the_original_size(self) -> None:
        assert bits_per_pixel(1000, (100, 80)) == pytest.approx(1.0)

    def test_kbps(self) -> None:
        assert kbps(1250, 30) == pytest.approx(300.0)

    @pytest.mark.parametrize("args", [(-1, (10, 10)), (10, (0, 10))])
    def test_bad_bpp_input(self, args: tuple) -> None:
        with pytest.raises(ValueError):
            bits_per_pixel(*args)

    def test_bad_fps(self) -> None:
        with pytest.raises(ValueError, match="fps"):
            kbps(10, 0)
