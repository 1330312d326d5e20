"""``fpnlink mfiba {calibrate,tune,report}`` on tiny images, and the edge's ``--budget`` built on their profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from fpnlink.edge import EdgeAgent
from fpnlink.edge.cli import main as edge_main
from fpnlink.edge.operating_point import DEFAULT_BUDGET, budgeted_coder, choose_operating_point
from fpnlink.edge.settings import EdgeSettings
from fpnlink.shared.codec import make_codec
from fpnlink.shared.errors import FingerprintMismatchError
from fpnlink.shared.mfiba import BudgetedCoder, RateController, load_profile, parse_budget
from fpnlink.shared.model import TRANSMITTED_SCALES
from fpnlink.tools.cli import main
from fpnlink.tools.mfiba_tune import choose_gains
from fpnlink.tools.synth import generate_dataset, render_scene

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(2):
        image, _ = render_scene(np.random.default_rng([7, i]), 128)
        Image.fromarray(image).save(folder / f"scene{i}.png")
    return folder


@pytest.fixture(scope="module")
def profile_path(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    code = main(["mfiba", "calibrate", "--data", str(image_dir), "--weights", "random:0", "--codec", "quant",
                 "--out", str(out), "--images", "2", "--levels", "2", "--min-size", "128", "--max-size", "128",
                 "--detections", "10", "--threads", "2", "--no-progress"])
    assert code == 0
    return out


class TestCalibrate:
    def test_writes_a_valid_profile(self, profile_path):
        profile = load_profile(profile_path)
        assert profile.codec.name == "quant" and profile.codec.phi_grid == "integer"
        assert profile.calibration["images"] == 2 and profile.calibration["levels"] == [1.0, 8.0]
        assert set(profile.rate_phi) == set(TRANSMITTED_SCALES)
        assert profile.fast_predictor is not None
        assert len(profile.samples["rate_phi"]) == 2 * 4 * 8  # images x scales x integer phi 1..8
        for model in profile.rate_phi.values():
            assert 0 < model.r_min < model.r_max

    def test_bad_data(self, tmp_path, capsys):
        code = main(["mfiba", "calibrate", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "p.json"),
                     "--min-size", "128", "--max-size", "128"])
        assert code == 2 and "--data must be" in capsys.readouterr().err

    def test_bad_levels(self, tmp_path):
        with pytest.raises(SystemExit):
            main(["mfiba", "calibrate", "--data", "synth:1", "--out", str(tmp_path / "p.json"), "--levels", "9"])


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, n=6, size=128, seed=5, val_fraction=0.34, test_fraction=0.0, progress=False)
    return out


class TestTune:
    def test_scores_every_candidate_and_saves_the_best(self, profile_path, synth_dir, tmp_path, capsys):
        out = tmp_path / "tuned.json"
        code = main(["mfiba", "tune", str(profile_path), "--data", str(synth_dir), "--weights", "random:0",
                     "--out", str(out), "--images", "2", "--scales", "1", "--grid", "1,3", "--phis", "2,5",
                     "--detections", "10", "--threads", "2", "--no-progress", "--min-ap-gain", "0"])
        assert code == 0
        tuned = load_profile(out)
        tuning = tuned.calibration["tuning"]
        assert tuning["images"] == 2 and tuning["phis"] == [2.0, 5.0]
        rows = tuning["candidates"]
        assert [row["gains"]["1"] for row in rows] == [1.0, 3.0]  # the untuned vector first, no repeat
        best = [max(rows, key=lambda row: row["ap"][k])["gains"] for k in range(2)]
        assert tuning["chosen"] == best
        assert [p.gains for p in tuned.weight_gains] == best and tuning["rates"][0] < tuning["rates"][1]
        assert [p.rate for p in tuned.weight_gains] == tuning["rates"]
        for row in rows:
            assert len(row["ap"]) == 2 and all(0.0 <= ap <= 1.0 for ap in row["ap"])
            assert 0.0 <= row["median_rate_error"] < 0.5  # real payloads against uniform phi's budgets
        text = capsys.readouterr().out
        assert "P3 3" in text and "*" in text and f"wrote {out}" in text
        assert tuned.rate_phi.keys() == load_profile(profile_path).rate_phi.keys()

        reselected = tmp_path / "reselected.json"
        assert main(["mfiba", "tune", str(out), "--reselect", "--min-ap-gain", "2", "--out", str(reselected)]) == 0
        again = load_profile(reselected)
        assert [p.gains["1"] for p in again.weight_gains] == [1.0, 1.0]  # no AP win exceeds 2
        assert again.calibration["tuning"]["candidates"] == rows and again.rate_phi == tuned.rate_phi

    def test_choose_gains_keeps_the_untuned_row_unless_a_win_exceeds_the_margin(self):
        untuned, other = {"1": 1.0}, {"1": 4.0}
        table = [{"gains": untuned, "ap": [0.50, 0.60]}, {"gains": other, "ap": [0.52, 0.601]}]
        assert choose_gains(table, 0.005) == [other, untuned]
        assert choose_gains(table, 0.0) == [other, other]
        assert choose_gains(table, 0.05) == [untuned, untuned]
        with pytest.raises(ValueError, match="--min-ap-gain must be >= 0"):
            choose_gains(table, -0.1)

    def test_reselect_needs_a_tuning_table_and_data_otherwise(self, profile_path, tmp_path, capsys):
        assert main(["mfiba", "tune", str(profile_path), "--reselect", "--out", str(tmp_path / "t.json")]) == 2
        assert "has no tuning table" in capsys.readouterr().err
        assert main(["mfiba", "tune", str(profile_path), "--out", str(tmp_path / "t.json")]) == 2
        assert "--data is required (unless --reselect)" in capsys.readouterr().err
        assert not (tmp_path / "t.json").exists()

    @pytest.mark.parametrize("args, message", [
        (["--scales", "7"], "--scales must name some of the profile's scales"),
        (["--grid", "0,1"], "--grid must hold positive gains"),
        (["--phis", "99"], "lie in the codec's coded range"),
        (["--phis", "3,2"], "--phis must be increasing"),
        (["--skip", "100"], "none left after skipping 100"),
        (["--weights", "random:1"], "does not match"),
    ])
    def test_bad_arguments(self, profile_path, synth_dir, tmp_path, capsys, args, message):
        code = main(["mfiba", "tune", str(profile_path), "--data", str(synth_dir), "--weights", "random:0",
                     "--out", str(tmp_path / "t.json"), "--images", "1", "--no-progress", *args])
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "t.json").exists()


class TestReport:
    def test_prints_fits_and_writes_pngs(self, profile_path, tmp_path, capsys):
        assert main(["mfiba", "report", str(profile_path), "--out", str(tmp_path), "--json",
                     str(tmp_path / "fits.json")]) == 0
        text = capsys.readouterr().out
        assert "Eq. 3" in text and "Eq. 7" in text and "quad CC" in text
        for name in ("loss_rate.png", "rate_phi.png"):
            assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
        assert (tmp_path / "fits.json").is_file()

    def test_bad_profile(self, profile_path, tmp_path, capsys):
        broken = tmp_path / "broken.json"
        broken.write_text(profile_path.read_text().replace('"phi_grid": "integer"', '"phi_grid": "octal"'))
        assert main(["mfiba", "report", str(broken)]) == 2
        assert "codec.phi_grid" in capsys.readouterr().err


class TestEdgeBudget:
    def test_agent_codes_to_the_budget_with_planned_bits(self, profile_path, tiny_bundle):
        profile = load_profile(profile_path)
        codec = make_codec("quant")
        agent = EdgeAgent(tiny_bundle, codec, ["detect"], stream_id="budget-test")
        profile.check_compatible(codec, agent.model_fingerprint)
        image, _ = render_scene(np.random.default_rng([8, 0]), 128)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        positions = [(32 // 2**i) ** 2 for i in range(4)]  # 128 x 128 input: P2 is 32 x 32
        low = sum(m.r_min * s for m, s in zip(profile.rate_phi.values(), positions))
        high = sum(m.r_max * s for m, s in zip(profile.rate_phi.values(), positions))
        budget = parse_budget(f"{(low * high) ** 0.5 / 128**2:.4f}bpp")
        controller = RateController(codec, profile)
        coder = BudgetedCoder(controller, profile.fast_predictor.importance, budget)
        overhead = controller.overhead_bits
        encoded = agent.encode(tensor, 1, rate_control=coder)
        assert encoded.rate_decision is not None
        importance, result = encoded.rate_decision.importance, encoded.rate_decision.control
        assert set(importance.weights) == set(TRANSMITTED_SCALES) and importance.mode == "fast"
        planned = {s.name: s.planned_bits for s in encoded.frame.scales}
        assert planned == result.planned_bits and all(v > 0 for v in planned.values())
        target = budget.bits_per_frame((128, 128))
        assert result.budget_bits == target
        assert sum(planned.values()) == pytest.approx(target - overhead, abs=len(planned))
        phi = {s.name: s.phi for s in encoded.frame.scales}
        low, high = codec.phi_range
        assert phi == result.phi and all(low <= p <= high for p in phi.values())
        assert abs(8 * encoded.frame_bytes - target) / target < 0.10
        coder.observe_frame(encoded.frame_bytes)
        measured = 8 * encoded.frame_bytes - result.payload_bits
        assert controller.overhead_bits == pytest.approx((1 - controller.ema) * overhead + controller.ema * measured)
        with pytest.raises(ValueError, match="either phi or rate_control"):
            agent.encode(tensor, 2, phi={"0": 4.0}, rate_control=coder)

    def test_infeasible_budget_is_sent_at_the_lowest_rates_and_warned_once(self, profile_path, tiny_bundle, caplog):
        from fpnlink.edge.cli import _rate_record

        profile = load_profile(profile_path)
        codec = make_codec("quant")
        agent = EdgeAgent(tiny_bundle, codec, ["detect"], stream_id="budget-test")
        coder = BudgetedCoder(RateController(codec, profile), profile.fast_predictor.importance, parse_budget("1KB"))
        image, _ = render_scene(np.random.default_rng([8, 1]), 128)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        records = []
        with caplog.at_level("WARNING", logger="fpnlink-edge"):
            for frame_id in (1, 2):
                encoded = agent.encode(tensor, frame_id, rate_control=coder)
                records.append(_rate_record(coder, encoded))
        assert [r["feasible"] for r in records] == [False, False] and coder.infeasible_frames == 2
        assert all(phi == 1.0 for phi in records[0]["phi"].values())
        assert len([m for m in caplog.messages if "below what codec quant needs" in m]) == 1

    def test_operating_point_defaults_to_a_budget_where_a_profile_is_at_hand(self, profile_path, tiny_bundle):
        codec = make_codec("quant")
        backbone = tiny_bundle.backbone_fingerprint_for(["detect"])
        point = choose_operating_point(codec, backbone, profile_path=profile_path)
        assert point.phi is None and point.budget == parse_budget(DEFAULT_BUDGET)
        assert point.profile.to_dict() == load_profile(profile_path).to_dict()
        assert point.describe() == f"budget {DEFAULT_BUDGET}, MFIBA profile {profile_path}"
        coder = budgeted_coder(point, codec, "fast", ["detect"])
        assert coder.budget == point.budget
        assert choose_operating_point(codec, backbone, budget="30KB", profile_path=profile_path).budget.value == 240e3
        assert choose_operating_point(codec, backbone, phi=3.0, profile_path=profile_path).phi == 3.0
        fallback = choose_operating_point(codec, backbone)  # no quant profile ships
        assert fallback.phi == codec.default_phi and fallback.budget is None
        assert fallback.describe() == f"phi {codec.default_phi:g} on every scale"

    def test_operating_point_refusals(self, profile_path, tiny_bundle):
        codec = make_codec("quant")
        backbone = tiny_bundle.backbone_fingerprint_for(["detect"])
        with pytest.raises(ValueError, match="no MFIBA profile ships for codec quant"):
            choose_operating_point(codec, backbone, budget="0.1bpp")
        with pytest.raises(ValueError, match="no MFIBA profile ships for codec quant"):
            choose_operating_point(codec, backbone, link_adaptive=True)
        with pytest.raises(FingerprintMismatchError):
            choose_operating_point(codec, "0000000000000000", profile_path=profile_path)
        with pytest.raises(ValueError, match="no rate control"):
            budgeted_coder(choose_operating_point(codec, backbone, phi=3.0), codec, "fast", ["detect"])

    @pytest.mark.parametrize("flags, message", [
        ({"budget": "0.5bpp", "codec": "quant"}, "needs an MFIBA profile and none ships for codec quant"),
        ({"max_kbps": "800", "codec": "quant"}, "max_kbps needs an MFIBA profile"),
        ({"budget": "0.5bpp", "profile": "p.json", "phi": 4.0}, "either phi"),
        ({"budget": "lots", "profile": "p.json"}, "cannot parse budget"),
        ({"mfip": "slow"}, "unknown MFIP mode"),
    ])
    def test_settings_validation(self, flags, message):
        with pytest.raises(ValidationError, match=message):
            EdgeSettings(**flags)

    def test_cli_usage_errors(self, image_dir, profile_path, tmp_path, capsys):
        assert edge_main(["run", "--source", str(image_dir), "--server", "localhost:1", "--budget", "0.5bpp",
                          "--codec", "quant"]) == 2
        assert "needs an MFIBA profile" in capsys.readouterr().err
        assert edge_main(["run", "--source", str(image_dir), "--server", "localhost:1", "--budget", "2Mbps",
                          "--profile", str(profile_path)]) == 2
        assert "cannot parse budget '2Mbps'" in capsys.readouterr().err
