"""Tests for fpnlink.tools.train and fpnlink.shared.model.assets: a tiny run, the bundle export, asset parts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fpnlink.shared.errors import WeightsError
from fpnlink.shared.model.assets import assemble, read_asset, synthetic_checkpoint, write_asset
from fpnlink.shared.model.zoo import ModelConfig, load_bundle
from fpnlink.tools.synth import CATEGORIES, generate_dataset
from fpnlink.tools.train import StepBatches, TrainConfig, _batch_order, bundle_states, evaluate, state_path, train

SIZE = 128
TASKS = ["detect", "segment", "keypoints"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate_dataset(out, n=5, size=SIZE, seed=0, val_fraction=0.2, test_fraction=0.0, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "ckpt.pt"
    config = TrainConfig(size=SIZE, iters=2, batch=2, warmup=1, box_batch=32)
    summary = train(data, out, config, device="cpu", checkpoint_every_min=60, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def asset(trained: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    asset_dir = tmp_path_factory.mktemp("asset") / "synthetic"
    write_asset(trained[0], asset_dir)
    return asset_dir


class TestTrain:
    def test_losses_finite(self, trained: tuple[Path, dict]) -> None:
        _, summary = trained
        assert summary["iterations"] == 2
        assert set(summary["last_losses"]) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                               "loss_box_reg", "loss_mask", "loss_keypoint"}
        assert all(math.isfinite(v) for v in summary["last_losses"].values())

    def test_writes_bundle_and_state(self, trained: tuple[Path, dict]) -> None:
        ckpt, _ = trained
        state = torch.load(state_path(ckpt), map_location="cpu", weights_only=True)
        assert state["iteration"] == 2 and {"model", "optimizer", "config"} <= set(state)

    def test_resume_continues(self, data: Path, trained: tuple[Path, dict]) -> None:
        config = TrainConfig(size=SIZE, iters=3, batch=2, warmup=1, box_batch=32)
        summary = train(data, trained[0], config, device="cpu", resume=True, checkpoint_every_min=60, progress=False)
        assert summary["iterations"] == 3

    def test_resume_without_state_fails(self, data: Path, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="no training state"):
            train(data, tmp_path / "none.pt", TrainConfig(size=SIZE, iters=1), resume=True, progress=False)

    def test_step_batches_resume_the_same_order(self) -> None:
        whole = list(StepBatches(n=7, batch=2, seed=3, start=0, stop=9))
        assert list(StepBatches(n=7, batch=2, seed=3, start=4, stop=9)) == whole[4:]
        assert whole[3] == _batch_order(7, 3, 2, 3) and len(StepBatches(7, 2, 3, 4, 9)) == 5
        assert whole[:3] != whole[3:6]  # a new permutation each epoch of 3 steps

    def test_loader_worker_process(self, data: Path, tmp_path: Path) -> None:
        config = TrainConfig(size=SIZE, iters=1, batch=2, warmup=1, box_batch=32)
        summary = train(data, tmp_path / "w.pt", config, device="cpu", checkpoint_every_min=60, progress=False,
                        workers=1)
        assert summary["iterations"] == 1 and all(math.isfinite(v) for v in summary["last_losses"].values())

    def test_negative_workers_refused_before_work(self, data: Path, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="--workers must be >= 0"):
            train(data, tmp_path / "none.pt", TrainConfig(size=SIZE, iters=1), workers=-1, progress=False)
        assert not (tmp_path / "none.pt").exists()

    def test_bf16_autocast_step(self, data: Path, tmp_path: Path) -> None:
        config = TrainConfig(size=SIZE, iters=1, batch=2, warmup=1, box_batch=32, precision="bf16")
        summary = train(data, tmp_path / "bf16.pt", config, device="cpu", checkpoint_every_min=60, progress=False)
        assert all(math.isfinite(v) for v in summary["last_losses"].values())
        state = torch.load(state_path(tmp_path / "bf16.pt"), map_location="cpu", weights_only=True)
        assert all(v.dtype != torch.bfloat16 for v in state["model"].values())

    @pytest.mark.parametrize("kwargs", [{"size": 32}, {"iters": 0}, {"lr": 0.0}, {"batch": 0}, {"precision": "fp8"}])
    def test_bad_config(self, kwargs: dict) -> None:
        with pytest.raises(ValueError):
            TrainConfig(**kwargs)

    def test_lr_schedule(self) -> None:
        config = TrainConfig(iters=100, warmup=10, lr=0.1)
        assert config.lr_at(0) < config.lr_at(5) < config.lr_at(10) == pytest.approx(0.1)
        assert config.lr_at(100) == pytest.approx(0.001)


class TestExport:
    def test_bundle_states_split_heads(self) -> None:
        state = {"backbone.w": torch.zeros(1), "roi_heads.mask_head.w": torch.zeros(1),
                 "roi_heads.keypoint_head.w": torch.zeros(1)}
        states = bundle_states(state)
        assert set(states["faster"]) == {"backbone.w"}
        assert set(states["mask"]) == {"backbone.w", "roi_heads.mask_head.w"}
        assert set(states["keypoint"]) == {"backbone.w", "roi_heads.keypoint_head.w"}

    def test_zoo_loads_three_models_one_backbone(self, trained: tuple[Path, dict]) -> None:
        bundle = load_bundle(str(trained[0]), ModelConfig(min_size=SIZE, max_size=SIZE))
        assert set(bundle.models) == {"faster", "mask", "keypoint"}
        assert bundle.categories["mask"] == ["__background__", *CATEGORIES]
        bundle.backbone_fingerprint_for(TASKS)  # raises if the backbones differ
        features, sizes, originals = bundle.edge_half(TASKS)([torch.rand(3, SIZE, SIZE)])
        with torch.inference_mode():
            out = bundle.cloud_half("keypoint")(features, sizes, originals)[0]
        assert out["keypoints"].shape[1:] == (17, 3)

    def test_evaluate_reports_three_aps(self, data: Path, trained: tuple[Path, dict]) -> None:
        metrics = evaluate(trained[0], data, "val", size=SIZE, max_images=1, progress=False)
        for key in ("bbox_AP", "segm_AP", "keypoints_AP"):
            assert 0.0 <= metrics[key] <= 1.0


class TestAsset:
    def test_parts_and_manifest(self, asset: Path) -> None:
        manifest = json.loads((asset / "manifest.json").read_text())
        sizes = [(asset / p["file"]).stat().st_size for p in manifest["parts"]]
        assert len(sizes) >= 2 and max(sizes) < 16_000_000 and sum(sizes) < 64_000_000

    def test_round_trip(self, asset: Path, trained: tuple[Path, dict], tmp_path: Path) -> None:
        path = assemble(asset, tmp_path)
        assert assemble(asset, tmp_path) == path  # cached
        original = torch.load(trained[0], map_location="cpu", weights_only=True)["models"]["keypoint"]
        rebuilt = torch.load(path, map_location="cpu", weights_only=True)["models"]["keypoint"]
        assert set(original) == set(rebuilt)
        for key, value in original.items():
            if value.is_floating_point() and value.dim() >= 2:
                step = value.abs().reshape(value.shape[0], -1).amax(1).max() / 127
                assert (rebuilt[key] - value).abs().max() <= step * 0.51 + 1e-6, key
            else:
                assert torch.equal(rebuilt[key], value), key
        bundle = load_bundle(str(path), ModelConfig(min_size=SIZE, max_size=SIZE), archs=("keypoint",))
        assert bundle.trained and set(bundle.models) == {"keypoint"}

    def test_tampered_part_named(self, asset: Path, tmp_path: Path) -> None:
        bad = tmp_path / "synthetic"
        bad.mkdir()
        for f in asset.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        part = bad / "part-001.bin"
        data = bytearray(part.read_bytes())
        data[100] ^= 0xFF
        part.write_bytes(bytes(data))
        with pytest.raises(WeightsError, match="part-001.bin.*SHA-256.*fpnlink train"):
            read_asset(bad)
        part.unlink()
        with pytest.raises(WeightsError, match="part-001.bin is missing"):
            synthetic_checkpoint(bad, tmp_path / "cache")

    def test_no_asset_says_how_to_train(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="fpnlink train"):
            synthetic_checkpoint(tmp_path / "empty", tmp_path / "cache")
