"""A miniature ``fpnlink bench rd``: the harness end to end on tiny images with random weights.

Random weights detect nothing useful, so no AP threshold is checked: only that every file is
written, every JSON key is present, and every number is finite or null with a reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fpnlink.edge.operating_point import DEFAULT_BUDGET
from fpnlink.shared.codec import make_codec
from fpnlink.shared.codec.xscale import TINY_CHECKPOINT
from fpnlink.shared.mfiba import GainPoint, load_profile, parse_budget, shipped_profile
from fpnlink.shared.mfiba.control import DEFAULT_TOLERANCE
from fpnlink.shared.model import ModelConfig, load_bundle
from fpnlink.tools import image_coding
from fpnlink.tools.bench import rd, rd_report
from fpnlink.tools.cli import build_parser
from fpnlink.tools.evaluation import METRICS, load_dataset
from fpnlink.tools.synth import generate_dataset

SIZE = 64
NET = 32
"""Network input side: the 64 px images are resized to 32 px, which keeps the RPN and box head cheap."""
RATE_POINTS = 2
EDGE_SIZE = 88
"""Image side of the edge-default run: DEFAULT_BUDGET (0.6bpp) falls inside the tiny codec's rates here; at 64 px it
is below the lowest, at 96 px above the highest (every frame saturated)."""


def _no_nan(value: str) -> Any:
    raise AssertionError(f"JSON holds {value}")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier than 2 on a shared 2-core machine
    try:
        data = tmp_path_factory.mktemp("data")
        generate_dataset(data, n=4, size=SIZE, seed=1, val_fraction=0.5, test_fraction=0.0, progress=False)
        out = tmp_path_factory.mktemp("report")
        json_path = out.parent / "rd_quick.json"
        settings = rd.RdSettings(
            data=data, weights="random:0", out=out, quick=True, json_path=json_path, images=2,
            rate_points=RATE_POINTS, learned_ckpt="none", size=NET, calib_images=1, mfip_levels=3,
            detections_per_img=2, progress=False, command="test",
        )
        rd.run_rd_bench(settings)
    finally:
        torch.set_num_threads(threads)
    return json.loads(json_path.read_text(), parse_constant=_no_nan), out, json_path


@pytest.fixture(scope="module")
def edge_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    """Only ``--configs edge_default``, on the shipped tiny xscale checkpoint; returns the report, out and data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = tmp_path_factory.mktemp("edge_data")
        generate_dataset(data, n=4, size=EDGE_SIZE, seed=1, val_fraction=0.5, test_fraction=0.0, progress=False)
        out = tmp_path_factory.mktemp("edge_report")
        settings = rd.RdSettings(
            data=data, weights="random:0", out=out, quick=True, images=2, learned_codec="xscale",
            learned_ckpt=str(TINY_CHECKPOINT), size=NET, calib_images=1, mfip_levels=3, detections_per_img=2,
            configs=("edge_default",), progress=False, command="test",
        )
        rd.run_rd_bench(settings)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "rd.json").read_text(), parse_constant=_no_nan), out, data


class TestMiniatureRun:
    def test_files_written(self, report: tuple[dict[str, Any], Path, Path]) -> None:
        _, out, json_path = report
        for name in ("report.md", "rd.json", "rd_box.png", "rd_mask.png", "rd_keypoint.png"):
            assert (out / name).stat().st_size > 0, name
        assert json.loads((out / "rd.json").read_text()) == json.loads(json_path.read_text())
        text = (out / "report.md").read_text()
        assert "## BD-rate" in text and "## Per-stage timings" in text and "skipped" in text

    def test_top_level_keys(self, report: tuple[dict[str, Any], Path, Path]) -> None:
        data, _, _ = report
        assert {"weights", "ap_uncompressed", "configs", "bd_rate_percent", "timings_ms", "mfiba"} <= set(data)
        assert data["weights"]["name"] == "random:0" and len(data["weights"]["fingerprint"]) == 16
        assert set(data["ap_uncompressed"]) == set(METRICS)
        assert data["data"]["images"] == 2 and data["bd_rate_percent"]["images"] == 2

    def test_every_configuration_has_points_or_a_reason(self, report: tuple[dict[str, Any], Path, Path]) -> None:
        data, _, _ = report
        assert set(data["configs"]) == set(rd_report.CONFIGS)
        for name in ("learned_uniform", "edge_default"):
            skipped = data["configs"][name]
            assert skipped["points"] == [] and "--learned-ckpt none" in skipped["skipped"], name
        for name, entry in data["configs"].items():
            if name in ("learned_uniform", "edge_default"):
                continue
            assert entry["skipped"] is None, name
            assert len(entry["points"]) == (1 if name == "raw16" else RATE_POINTS), name
            for point in entry["points"]:
                assert len(point) == 4 and math.isfinite(point[0]) and point[0] > 0
                assert all(ap is None or 0 <= ap <= 1 for ap in point[1:])

    def test_mfiba_falls_back_to_quant_and_matches_budgets(self, report: tuple[dict[str, Any], Path, Path]) -> None:
        data, _, _ = report
        assert data["mfiba"]["codec"] == "quant" and data["mfiba"]["budgets_matched_to"] == "quant_uniform"
        for mode in ("mfiba_full", "mfiba_fast"):
            entry = data["configs"][mode]
            assert entry["codec"] == "quant"
            for detail in entry["detail"]:
                assert math.isfinite(detail["rate_control"]["budget_error_median"])
        assert data["bd_rate_percent"]["mfiba_vs_uniform_configs"] == ["mfiba_full", "quant_uniform"]

    def test_edge_default_needs_the_learned_codec(self, report: tuple[dict[str, Any], Path, Path]) -> None:
        data, out, _ = report
        assert data["edge_default"]["ran"] is False and "--learned-ckpt none" in data["edge_default"]["reason"]
        assert "## Edge default operating point\n\nSkipped: " in (out / "report.md").read_text()

    def test_bd_rates_are_finite_or_null_with_reason(self, report: tuple[dict[str, Any], Path, Path]) -> None:
        bd = report[0]["bd_rate_percent"]
        for headline in ("mfiba_vs_uniform", "features_vs_jpeg"):
            assert set(bd[headline]) == set(METRICS)
            for metric, value in bd[headline].items():
                assert (value is not None and math.isfinite(value)) or bd["reasons"][headline][metric]
        for anchor, rows in bd["table"].items():
            for name, values in rows.items():
                for metric, value in values.items():
                    assert (value is not None and math.isfinite(value)) or bd["table_reasons"][anchor][name][metric]

    def test_rates_count_real_bytes(self, report: tuple[dict[str, Any], Path, Path]) -> None:
        data, _, _ = report
        raw16 = data["configs"]["raw16"]["detail"][0]
        # fp16 P2..P5 of a 32x32 network input: 256 * (8^2 + 4^2 + 2^2 + 1^2) * 2 bytes, plus the frame header;
        # bpp divides by the ORIGINAL 64x64 image
        payload = 256 * (8**2 + 4**2 + 2**2 + 1**2) * 2
        assert payload < raw16["bytes_per_frame"] < payload + 1024
        assert raw16["bpp"] == pytest.approx(raw16["bytes_per_frame"] * 8 / SIZE**2)
        assert raw16["kbps"] == pytest.approx(raw16["bytes_per_frame"] * 8 * 30 / 1000)
        jpeg = data["configs"]["jpeg"]["detail"]
        assert jpeg[0]["bpp"] < jpeg[-1]["bpp"]

    def test_timings_cover_each_stage(self, report: tuple[dict[str, Any], Path, Path]) -> None:
        stages = report[0]["timings_ms"]
        for stage in ("backbone", "heads_faster", "heads_mask", "heads_keypoint", "quant_uniform_encode",
                      "quant_uniform_decode", "mfip_full", "mfip_fast", "jpeg_encode", "webp_decode"):
            assert stages[stage]["n"] > 0 and math.isfinite(stages[stage]["median_ms"]), stage


class TestEdgeDefault:
    def test_only_the_requested_configuration_runs(self, edge_report: tuple[dict[str, Any], Path, Path]) -> None:
        configs = edge_report[0]["configs"]
        assert [n for n, e in configs.items() if not e["skipped"]] == ["edge_default"]
        assert configs["jpeg"]["skipped"] == "not requested (--configs)"

    def test_one_point_on_the_learned_codec(self, edge_report: tuple[dict[str, Any], Path, Path]) -> None:
        entry = edge_report[0]["configs"]["edge_default"]
        assert entry["label"] == rd_report.LABELS["edge_default"] and DEFAULT_BUDGET in entry["label"]
        assert entry["codec"] == "xscale" and len(entry["points"]) == 1 == len(entry["detail"])
        bpp, *aps = entry["points"][0]
        assert math.isfinite(bpp) and bpp > 0 and len(aps) == len(METRICS)
        assert entry["detail"][0]["setting"] == {"budget": DEFAULT_BUDGET, "mfip": "fast"}

    def test_frames_honour_the_default_budget(self, edge_report: tuple[dict[str, Any], Path, Path]) -> None:
        detail = edge_report[0]["configs"]["edge_default"]["detail"][0]
        budget = parse_budget(DEFAULT_BUDGET).bits_per_frame((EDGE_SIZE, EDGE_SIZE))
        control = detail["rate_control"]
        assert control["budget_bits_mean"] == pytest.approx(budget)
        assert control["infeasible_frames"] == 0 and control["budget_error_median"] <= DEFAULT_TOLERANCE
        assert 8 * detail["bytes_per_frame"] == pytest.approx(budget, rel=0.1)
        assert detail["bpp"] == pytest.approx(parse_budget(DEFAULT_BUDGET).value, rel=0.1)

    def test_bytes_against_a_quality_75_jpeg(self, edge_report: tuple[dict[str, Any], Path, Path]) -> None:
        data, out, root = edge_report
        dataset = load_dataset(root, "val", 2)
        jpeg75 = [len(image_coding.encode_image(dataset.image_array(i), "JPEG", 75)) for i in dataset.image_ids]
        edge = data["edge_default"]
        assert edge["ran"] and edge["jpeg75_bytes_per_frame"] == pytest.approx(sum(jpeg75) / len(jpeg75))
        frame_bytes = data["configs"]["edge_default"]["detail"][0]["bytes_per_frame"]
        assert edge["bytes_vs_jpeg75"] == pytest.approx(frame_bytes / edge["jpeg75_bytes_per_frame"])
        assert edge["meets_targets"]["bytes_vs_jpeg75"] == (edge["bytes_vs_jpeg75"] <= 0.5)
        assert set(edge["ap_delta_vs_uncompressed"]) == set(METRICS)
        text = (out / "report.md").read_text()
        assert "## Edge default operating point" in text and "quality-75 JPEG" in text

    def test_a_tuned_profile_is_used_and_reported(self, edge_report: tuple[dict[str, Any], Path, Path],
                                                   tmp_path: Path) -> None:
        _, out, root = edge_report
        calibrated = load_profile(out / "profile_xscale_stream0.json")
        tuned = dataclasses.replace(calibrated, weight_gains=(GainPoint(1.0, {"1": 4.0}), GainPoint(8.0, {})))
        settings = rd.RdSettings(
            data=root, weights="random:0", out=tmp_path, quick=True, images=1, learned_codec="xscale",
            learned_ckpt=str(TINY_CHECKPOINT), size=NET, profile=tuned.save(tmp_path / "tuned.json"),
            detections_per_img=2, configs=("edge_default",), progress=False, command="test",
        )
        rd.run_rd_bench(settings)
        report = json.loads((tmp_path / "rd.json").read_text(), parse_constant=_no_nan)
        assert report["mfiba"]["profiles"]["0"]["weight_gains"] == [
            {"rate": 1.0, "gains": {"1": 4.0}}, {"rate": 8.0, "gains": {}}]
        assert report["edge_default"]["ran"]

    def test_the_profile_shipped_for_the_codec_is_the_default(self, edge_report: tuple[dict[str, Any], Path, Path],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _, out, root = edge_report
        shipped = tmp_path / "shipped"
        shipped.mkdir()
        load_profile(out / "profile_xscale_stream0.json").save(shipped / "xscale-random0.json")
        monkeypatch.setattr(rd, "shipped_profile", functools.partial(shipped_profile, folder=shipped))
        sources = {}
        for calibrate in (False, True):
            run = tmp_path / f"calibrate_{calibrate}"
            rd.run_rd_bench(rd.RdSettings(
                data=root, weights="random:0", out=run, quick=True, images=1, learned_codec="xscale",
                learned_ckpt=str(TINY_CHECKPOINT), size=NET, calib_images=1, mfip_levels=3, detections_per_img=2,
                calibrate=calibrate, configs=("edge_default",), progress=False, command="test"))
            report = json.loads((run / "rd.json").read_text(), parse_constant=_no_nan)
            sources[calibrate] = report["mfiba"]["profiles"]["0"]["source"]
            assert (run / "profile_xscale_stream0.json").is_file() == calibrate
        assert sources[False].startswith("shipped for xscale") and sources[True].startswith("calibrated on")

    def test_summary_of_a_report(self) -> None:
        entry = {"skipped": None, "detail": [{
            "setting": {"budget": "0.5bpp"}, "bytes_per_frame": 400.0,
            "ap": {"box": 0.29, "mask": None, "keypoint": 0.1},
            "rate_control": {"budget_bits_mean": 3000.0, "budget_error_median": 0.01}}]}
        edge = rd_report.edge_default_summary(entry, {"box": 0.3, "mask": None, "keypoint": 0.2}, [900, 1100])
        assert edge["bytes_vs_jpeg75"] == pytest.approx(0.4)
        assert edge["ap_delta_vs_uncompressed"] == {"box": pytest.approx(-0.01), "mask": None,
                                                    "keypoint": pytest.approx(-0.1)}
        assert edge["meets_targets"] == {"bytes_vs_jpeg75": True, "box_ap_delta": True}
        skipped = rd_report.edge_default_summary({"skipped": "no codec", "detail": []}, {}, [])
        assert skipped == {"ran": False, "reason": "no codec"}


class TestPieces:
    def test_registered_under_bench(self) -> None:
        args = build_parser().parse_args(["bench", "rd", "--data", "d", "--weights", "random:0", "--out", "o",
                                          "--quick", "--rate-points", "2"])
        assert args.func is rd._run and args.rate_points == 2
        assert "edge_default" in args.configs.split(",")  # runs by default

    def test_spread_keeps_both_ends(self) -> None:
        assert rd.spread(rd.QUANT_BITS, 2) == [2, 8]
        assert rd.spread(rd.QUANT_BITS, 3) == [2, 5, 8]
        assert rd.spread(rd.IMAGE_QUALITIES, 10) == list(rd.IMAGE_QUALITIES)

    def test_uniform_points_leave_out_the_starve_level(self) -> None:
        xscale, quant = make_codec("xscale", checkpoint=TINY_CHECKPOINT), make_codec("quant")
        low, high = xscale.phi_range
        assert rd.uniform_phis(xscale, 4) == pytest.approx([low + (high - low) * k / 4 for k in (1, 2, 3, 4)])
        assert min(rd.uniform_phis(xscale, 2)) > xscale.starve_phi
        assert rd.uniform_phis(quant, 3) == pytest.approx([quant.phi_range[0], sum(quant.phi_range) / 2,
                                                           quant.phi_range[1]])

    @pytest.mark.parametrize("kwargs, match", [({"configs": ("h264",)}, "configs"), ({"rate_points": 1}, "rate_points"),
                                               ({"fps": 0.0}, "fps"), ({"mfip_tasks": ("pose",)}, "mfip_tasks")])
    def test_settings_are_validated(self, kwargs: dict, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            rd.RdSettings(data=Path("d"), weights="random:0", out=Path("o"), **kwargs)

    def test_image_round_trip(self) -> None:
        array = (torch.rand(32, 48, 3) * 255).to(torch.uint8).numpy()
        for fmt in rd.IMAGE_FORMATS.values():
            small, large = image_coding.encode_image(array, fmt, 10), image_coding.encode_image(array, fmt, 90)
            assert len(small) < len(large) and image_coding.decode_image(large).shape == (32, 48, 3)

    def test_streams_use_the_shared_pass_when_heads_are_shared(self) -> None:
        # The shared pass itself is tested in tests/shared/test_model.py (TestSharedPass).
        bundle = load_bundle("random:0", ModelConfig(min_size=NET, max_size=NET, detections_per_img=3),
                             archs=("faster", "mask"))
        assert set(rd.make_streams(bundle)[0].clouds) == {"faster", "mask"}  # random heads differ
        faster, mask = bundle.models["faster"], bundle.models["mask"]
        mask.rpn.load_state_dict(faster.rpn.state_dict())
        mask.roi_heads.box_head.load_state_dict(faster.roi_heads.box_head.state_dict())
        mask.roi_heads.box_predictor.load_state_dict(faster.roi_heads.box_predictor.state_dict())
        assert set(rd.make_streams(bundle)[0].clouds) == {"shared"}
        assert set(rd.make_streams(bundle, share_heads=False)[0].clouds) == {"faster", "mask"}


def _entry(points: list[tuple[float, float]] | None, codec: str | None = None, reason: str | None = None) -> dict:
    detail = [{"bpp": b, "task_bpp": {m: b for m in METRICS}, "ap": {m: a for m in METRICS}} for b, a in points or []]
    entry = {"skipped": reason, "detail": detail, "kind": "features"}
    if codec:
        entry["codec"] = codec
    return entry


class TestBdRateReport:
    def test_headlines_follow_the_codec_mfiba_ran_on(self) -> None:
        curve = [(0.1, 0.1), (0.2, 0.2), (0.4, 0.3)]
        cheaper = [(b * 0.8, a) for b, a in curve]
        configs = {name: _entry(curve) for name in rd_report.CONFIGS}
        configs["learned_uniform"] = _entry(None, reason="no checkpoint")
        configs["mfiba_full"] = _entry(cheaper, codec="quant")
        configs["mfiba_fast"] = _entry(curve, codec="quant")
        bd = rd_report.bd_rate_report(configs, 8)
        assert bd["mfiba_vs_uniform_configs"] == ["mfiba_full", "quant_uniform"]
        assert bd["mfiba_vs_uniform"] == {m: pytest.approx(-20.0) for m in METRICS}
        assert bd["mfiba_fast_vs_uniform"] == {m: pytest.approx(0.0) for m in METRICS}
        assert bd["features_vs_jpeg_configs"] == ["mfiba_full", "jpeg"]
        assert bd["table"]["vs_learned_uniform"]["jpeg"]["box"] is None
        assert "no checkpoint" in bd["table_reasons"]["vs_learned_uniform"]["jpeg"]["box"]
        assert bd["table"]["vs_jpeg"]["mfiba_full"]["mask"] == pytest.approx(-20.0)

    def test_flat_curves_are_null_with_reason(self) -> None:
        configs = {name: _entry([(0.1, 0.0), (0.2, 0.0)], codec="learned") for name in rd_report.CONFIGS}
        bd = rd_report.bd_rate_report(configs, 8)
        assert bd["mfiba_vs_uniform_configs"] == ["mfiba_full", "learned_uniform"]
        assert bd["mfiba_vs_uniform"]["box"] is None
        assert "rising quality" in bd["reasons"]["mfiba_vs_uniform"]["box"]
