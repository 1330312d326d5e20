"""Tests for fpnlink.tools.synth: determinism, COCO validity, exact visible masks, keypoints, sizes, errors."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fpnlink.tools import synth
from fpnlink.tools.synth import CATEGORIES, KEYPOINTS, PERSON, generate_dataset, render_scene

SCENE_SEEDS = range(12)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    generate_dataset(out, n=10, size=128, seed=3, val_fraction=0.2, test_fraction=0.2, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class TestDataset:
    def test_same_seed_identical_bytes(self, dataset: Path, tmp_path: Path) -> None:
        generate_dataset(tmp_path / "b", n=10, size=128, seed=3, val_fraction=0.2, test_fraction=0.2, progress=False)
        assert _files(dataset) == _files(tmp_path / "b")

    def test_other_seed_differs(self, dataset: Path, tmp_path: Path) -> None:
        generate_dataset(tmp_path / "c", n=10, size=128, seed=4, val_fraction=0.2, test_fraction=0.2, progress=False)
        assert _files(dataset) != _files(tmp_path / "c")

    def test_layout_and_split_sizes(self, dataset: Path) -> None:
        counts = {s: len(list((dataset / "images" / s).glob("*.png"))) for s in synth.SPLITS}
        assert counts == {"train": 6, "val": 2, "test": 2}
        assert all((dataset / "annotations" / f"{s}.json").is_file() for s in synth.SPLITS)

    @pytest.mark.parametrize("split", synth.SPLITS)
    def test_coco_loadable_and_masks_match(self, dataset: Path, split: str) -> None:
        coco = COCO(str(dataset / "annotations" / f"{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
        person = coco.loadCats(coco.getCatIds(catNms=[PERSON]))[0]
        assert person["keypoints"] == list(KEYPOINTS) and len(person["skeleton"]) == 19
        for ann in coco.loadAnns(coco.getAnnIds()):
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["area"] == mask.sum() == mask_utils.area(ann["segmentation"])
            assert ann["iscrowd"] == 0
            if ann["category_id"] == person["id"]:
                kp = np.array(ann["keypoints"]).reshape(-1, 3)
                assert kp.shape == (17, 3) and set(kp[:, 2]) <= {0, 1, 2}
                assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
                assert (kp[kp[:, 2] == 0, :2] == 0).all()
            else:
                assert "keypoints" not in ann


class TestScene:
    def test_image_and_instances(self) -> None:
        image, instances = render_scene(np.random.default_rng(0), 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert instances and all(i["mask"].shape == (96, 96) for i in instances)

    def test_visible_masks_are_disjoint(self) -> None:
        for seed in SCENE_SEEDS:
            _, instances = render_scene(np.random.default_rng(seed), 256)
            stacked = np.stack([i["mask"] for i in instances]).astype(int)
            assert stacked.sum(axis=0).max() <= 1

    def test_keypoint_visibility_follows_occlusion(self) -> None:
        flags = set()
        for seed in SCENE_SEEDS:
            _, instances = render_scene(np.random.default_rng(seed), 256)
            for k, inst in enumerate(instances):
                if "keypoints" not in inst:
                    continue
                later = np.zeros((256, 256), bool)
                for other in instances[k + 1:]:
                    later |= other["mask"]
                for x, y, v in inst["keypoints"]:
                    flags.add(int(v))
                    if v == 0:
                        continue
                    assert 0 <= x < 256 and 0 <= y < 256
                    assert later[int(y), int(x)] == (v == 1)
        assert flags == {0, 1, 2}

    def test_sizes_cover_small_medium_large(self) -> None:
        areas = [i["area"] for s in SCENE_SEEDS for i in render_scene(np.random.default_rng(s), 512)[1]]
        assert min(areas) < 32**2 and max(areas) > 96**2
        assert any(32**2 <= a <= 96**2 for a in areas)

    def test_every_class_appears(self) -> None:
        names = {i["category"] for s in SCENE_SEEDS for i in render_scene(np.random.default_rng(s), 256)[1]}
        assert names == set(CATEGORIES)

    def test_fast(self) -> None:
        start = time.perf_counter()
        for seed in range(5):
            render_scene(np.random.default_rng(seed), 512)
        assert (time.perf_counter() - start) / 5 < 0.25  # ~0.04 s on an idle core; slack for busy CI


class TestErrors:
    @pytest.mark.parametrize("kwargs, match", [
        ({"n": 0}, "n must be"),
        ({"n": 4, "val_fraction": 1.5}, "val_fraction"),
        ({"n": 4, "test_fraction": -0.1}, "test_fraction"),
        ({"n": 2, "val_fraction": 0.5, "test_fraction": 0.5}, "no training images"),
        ({"n": 4, "size": 16}, "size must be"),
    ])
    def test_bad_arguments(self, tmp_path: Path, kwargs: dict, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            generate_dataset(tmp_path, progress=False, **kwargs)

    def test_cli_reports_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        parser = argparse.ArgumentParser()
        synth.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["data", "synth", "--n", "0", "--out", str(tmp_path)])
        assert args.func(args) == 2
        assert "n must be >= 1" in capsys.readouterr().err

    def test_cli_writes_dataset(self, tmp_path: Path) -> None:
        parser = argparse.ArgumentParser()
        synth.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["data", "synth", "--n", "2", "--size", "64", "--out", str(tmp_path),
                                  "--val-fraction", "0", "--test-fraction", "0"])
        assert args.func(args) == 0
        assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 2
