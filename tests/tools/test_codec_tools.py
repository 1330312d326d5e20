"""``fpnlink codec {extract,train,export,eval}``, the BD-rate helper and the codec bench's registration."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpnlink.shared.codec import LearnedCodec
from fpnlink.tools.codec import cli as codec_cli
from fpnlink.tools.codec.shards import FeatureShards
from fpnlink.tools.codec.train import lambda_for
from fpnlink.tools.bd_rate import bd_psnr, bd_rate

TINY_ARCH = ["--latent", "8", "--hyper", "4", "--hidden", "8", "--lambdas", "32,512,4096"]


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fpnlink")
    codec_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["codec", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    assert _cli("extract", "--data", "synth:3:5:96", "--weights", "random:0", "--min-size", "64",
                "--max-size", "64", "--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def checkpoint(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "codec.pt"
    assert _cli("train", "--shards", str(shards), "--out", str(out), "--steps", "2", "--batch", "2",
                "--crop", "8", "--device", "cpu", "--no-progress", *TINY_ARCH) == 0
    return out


class TestExtract:
    def test_manifest_and_shapes(self, shards):
        manifest = json.loads((shards / "manifest.json").read_text())
        assert manifest["count"] == 3 and manifest["weights"] == "random:0"
        assert len(manifest["backbone_fingerprint"]) == 16
        data = FeatureShards(shards)
        assert [tuple(t.shape) for t in (data.features[n][0] for n in "0123")] == [
            (256, 16, 16), (256, 8, 8), (256, 4, 4), (256, 2, 2)]
        assert data.features["0"][0].dtype == torch.float16
        mean, std = data.normalisation()
        assert mean.shape == std.shape == (4, 256) and (std > 0).all()

    def test_image_folder_with_crops(self, tmp_path):
        for i in range(2):
            Image.fromarray((np.random.default_rng(i).random((70, 90, 3)) * 255).astype(np.uint8)).save(
                tmp_path / f"{i}.png")
        out = tmp_path / "shards"
        assert _cli("extract", "--data", str(tmp_path), "--min-size", "64", "--max-size", "96", "--crop", "6",
                    "--out", str(out)) == 0
        data = FeatureShards(out)
        assert len(data) == 2 and max(data.features["0"][0].shape[-2:]) == 6

    def test_bad_source(self, tmp_path, capsys):
        assert _cli("extract", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o")) == 2
        assert "error" in capsys.readouterr().err


class TestTrain:
    def test_two_steps_then_resume(self, checkpoint, shards, capsys):
        blob = torch.load(checkpoint, weights_only=True)
        assert blob["train"]["step"] == 2 and blob["meta"]["backbone_fingerprint"]
        before = LearnedCodec(checkpoint).fingerprint
        resumed = checkpoint.with_name("resumed.pt")
        resumed.write_bytes(checkpoint.read_bytes())
        assert _cli("train", "--shards", str(shards), "--out", str(resumed), "--steps", "4", "--resume",
                    "--device", "cpu", "--no-progress") == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["step"] == 4
        blob = torch.load(resumed, weights_only=True)
        assert blob["train"]["step"] == 4 and blob["config"]["latent"] == 8
        assert LearnedCodec(resumed).fingerprint != before

    def test_monotone_penalty_is_stored_and_set_again_on_resume(self, checkpoint, shards, tmp_path, capsys):
        resumed = tmp_path / "monotone.pt"
        resumed.write_bytes(checkpoint.read_bytes())
        assert _cli("train", "--shards", str(shards), "--out", str(resumed), "--steps", "3", "--resume",
                    "--monotone", "1.5", "--device", "cpu", "--no-progress") == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        blob = torch.load(resumed, weights_only=True)
        assert blob["train"]["step"] == 3 and blob["train"]["settings"]["monotone"] == 1.5
        assert math.isfinite(summary["loss"]) and blob["meta"]["min_size"] == blob["meta"]["max_size"]

    def test_resume_retargets_lambdas_keeping_level_count(self, checkpoint, shards, tmp_path, capsys):
        stored = torch.load(checkpoint, weights_only=True)["train"]["settings"]["lambdas"]
        resumed = tmp_path / "retarget.pt"
        resumed.write_bytes(checkpoint.read_bytes())
        wider = [v / 4 for v in stored[:-1]] + [stored[-1]]
        assert _cli("train", "--shards", str(shards), "--out", str(resumed), "--steps", "3", "--resume",
                    "--lambdas", ",".join(map(str, wider)), "--device", "cpu", "--no-progress") == 0
        assert torch.load(resumed, weights_only=True)["train"]["settings"]["lambdas"] == wider
        assert _cli("train", "--shards", str(shards), "--out", str(resumed), "--steps", "4", "--resume",
                    "--lambdas", "1,2", "--device", "cpu", "--no-progress") == 2
        assert f"has {len(stored)} gain levels" in capsys.readouterr().err

    def test_shared_transforms_flag(self, shards, tmp_path):
        out = tmp_path / "shared.pt"
        assert _cli("train", "--shards", str(shards), "--out", str(out), "--steps", "1", "--batch", "2",
                    "--crop", "8", "--device", "cpu", "--no-progress", "--shared", "--scales", "1,3", *TINY_ARCH) == 0
        blob = torch.load(out, weights_only=True)
        assert blob["config"]["per_scale"] is False and blob["train"]["settings"]["scales"] == ["1", "3"]
        codec = LearnedCodec(out)
        assert len(codec.model.branches) == 1 and codec.model.branch(3) is codec.model.branches[0]

    def test_lambda_interpolation(self):
        lambdas = (10.0, 1000.0)
        values = lambda_for(torch.tensor([0.0, 0.5, 1.0]), lambdas)
        assert torch.allclose(values, torch.tensor([10.0, 100.0, 1000.0]))

    def test_bad_lambdas(self, shards, tmp_path):
        assert _cli("train", "--shards", str(shards), "--out", str(tmp_path / "x.pt"), "--lambdas", "5") == 2


class TestExportEval:
    def test_export_strips_training_state(self, checkpoint, tmp_path):
        out = tmp_path / "shipped.pt"
        assert _cli("export", "--ckpt", str(checkpoint), "--out", str(out)) == 0
        assert "train" not in torch.load(out, weights_only=True)
        assert LearnedCodec(out).fingerprint == LearnedCodec(checkpoint).fingerprint

    def test_half_export_is_smaller_and_decodes_like_itself(self, checkpoint, tmp_path):
        full, half = tmp_path / "full.pt", tmp_path / "half.pt"
        assert _cli("export", "--ckpt", str(checkpoint), "--out", str(full)) == 0
        assert _cli("export", "--ckpt", str(checkpoint), "--out", str(half), "--half") == 0
        assert half.stat().st_size < 0.8 * full.stat().st_size
        stored = torch.load(half, weights_only=True)["state_dict"]
        assert stored["branches.0.g_a.0.weight"].dtype == torch.float16
        assert all(v.dtype != torch.float16 for k, v in stored.items() if ".g_a." not in k and ".g_s." not in k)
        codec = LearnedCodec(half)
        assert codec.fingerprint == LearnedCodec(half).fingerprint != LearnedCodec(full).fingerprint
        features = {"2": torch.randn(1, 256, 8, 12, generator=torch.Generator().manual_seed(3))}
        records = codec.encode(features, {"2": 1.0})
        decoded = LearnedCodec(half).decode(records)["2"]
        assert decoded.shape == features["2"].shape and torch.isfinite(decoded).all()

    def test_eval_writes_table_and_plot(self, checkpoint, shards, tmp_path):
        out = tmp_path / "eval"
        assert _cli("eval", "--shards", str(shards), "--ckpt", str(checkpoint), "--out", str(out),
                    "--phis", "0,2", "--limit", "2") == 0
        report = json.loads((out / "rd.json").read_text())
        assert [p["phi"] for p in report["learned"]] == [0.0, 2.0] and len(report["quant"]) == 8
        assert set(report["bd_rate_vs_quant_percent"]) == set(report["rate_monotonic"]) == {"0", "1", "2", "3", "all"}
        assert (out / "rd.md").read_text().startswith("# Learned codec RD")
        assert (out / "rd.png").read_bytes()[:4] == b"\x89PNG"


class TestBdRate:
    ANCHOR_RATE = [100.0, 200.0, 400.0, 800.0]
    ANCHOR_PSNR = [30.0, 33.0, 35.5, 37.0]

    @pytest.mark.parametrize("factor", [0.5, 0.8, 1.0, 1.25])
    def test_constant_rate_ratio_is_exact(self, factor):
        test_rate = [r * factor for r in self.ANCHOR_RATE]
        assert bd_rate(self.ANCHOR_RATE, self.ANCHOR_PSNR, test_rate, self.ANCHOR_PSNR) == pytest.approx(
            (factor - 1) * 100, abs=1e-9)

    def test_log_linear_curves(self):
        """log10 R = a + b * PSNR on both curves with a test offset d: BD-rate = 10**d - 1 (PCHIP is exact)."""
        psnr = np.array([28.0, 31.0, 33.0, 38.0])
        anchor = 10 ** (0.5 + 0.1 * psnr)
        test = 10 ** (0.5 - 0.05 + 0.1 * (psnr + 0.7))  # shifted PSNR samples, same line, offset -0.05
        assert bd_rate(anchor, psnr, test, psnr + 0.7) == pytest.approx((10**-0.05 - 1) * 100, abs=1e-9)
        # BD-PSNR on the same lines: at equal rate the test gains 0.05 / 0.1 = 0.5 dB
        assert bd_psnr(anchor, psnr, test, psnr + 0.7) == pytest.approx(0.5, abs=1e-9)

    def test_swapping_curves_inverts(self):
        test_rate, test_psnr = [90.0, 190.0, 350.0, 900.0], [30.2, 33.1, 35.0, 37.6]
        forward = bd_rate(self.ANCHOR_RATE, self.ANCHOR_PSNR, test_rate, test_psnr) / 100
        backward = bd_rate(test_rate, test_psnr, self.ANCHOR_RATE, self.ANCHOR_PSNR) / 100
        assert (1 + forward) * (1 + backward) == pytest.approx(1.0, abs=1e-12)

    def test_order_of_points_does_not_matter(self):
        test_rate, test_psnr = [90.0, 190.0, 350.0, 900.0], [30.2, 33.1, 35.0, 37.6]
        value = bd_rate(self.ANCHOR_RATE, self.ANCHOR_PSNR, test_rate, test_psnr)
        assert bd_rate(self.ANCHOR_RATE[::-1], self.ANCHOR_PSNR[::-1], test_rate[::-1], test_psnr[::-1]) == value
        assert math.isfinite(value) and value < 0

    @pytest.mark.parametrize("rate, psnr, match", [
        ([100.0], [30.0], "length"), ([100.0, -1.0], [30.0, 31.0], "positive"),
        ([100.0, 200.0], [40.0, 41.0], "overlap"), ([100.0, 200.0], [30.0, 30.0], "overlap|distinct"),
    ])
    def test_invalid(self, rate, psnr, match):
        with pytest.raises(ValueError, match=match):
            bd_rate(self.ANCHOR_RATE, self.ANCHOR_PSNR, rate, psnr)


def test_bench_registers_codec():
    from fpnlink.tools.bench import codec as bench_codec

    parser = argparse.ArgumentParser()
    bench_codec.register(parser.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(["codec", "--quick", "--json", "out.json"])
    assert args.quick and args.json == Path("out.json") and args.func is bench_codec._run
    assert bench_codec.register_bench is bench_codec.register


class TestTrainXscale:
    ARCH = ["--latent", "8", "--hyper", "4", "--hidden", "8", "--decoder", "8", "--lambdas", "1,64,1024"]

    def test_train_resume_export_decode(self, shards, tmp_path):
        from fpnlink.shared.codec import CrossScaleCodec

        out = tmp_path / "xscale.pt"
        common = ["--shards", str(shards), "--out", str(out), "--batch", "2", "--crop", "16", "--save-every", "2",
                  "--no-progress", *self.ARCH]
        assert _cli("train-xscale", *common, "--steps", "2", "--pca-init") == 0
        assert _cli("train-xscale", *common, "--steps", "4", "--resume") == 0
        logged = [json.loads(line) for line in out.with_suffix(".log").read_text().splitlines()]
        assert [entry["step"] for entry in logged] == [2, 4]
        blob = torch.load(out, weights_only=True)
        assert blob["train"]["step"] == 4 and blob["meta"]["backbone_weights"] == json.loads(
            (shards / "manifest.json").read_text())["backbone_weights"]
        assert blob["config"]["hyper_gains"] and "hyper_gains.log_scale" in blob["state_dict"]
        exported = tmp_path / "shipped.pt"
        assert _cli("export", "--ckpt", str(out), "--out", str(exported)) == 0
        codec = CrossScaleCodec(exported)
        frame = {n: FeatureShards(shards).features[n][0].float()[None] for n in "0123"}
        decoded = codec.decode(codec.encode(frame, dict.fromkeys(frame, 1.0)))
        assert all(decoded[n].shape == frame[n].shape for n in frame)

    def test_decoder_only_fine_tune_keeps_the_bitstream(self, shards, tmp_path):
        from fpnlink.shared.codec import CrossScaleCodec, container

        common = ["--shards", str(shards), "--batch", "2", "--crop", "16", "--no-progress"]
        assert _cli("train-xscale", *common, "--out", str(tmp_path / "base.pt"), "--steps", "2", *self.ARCH) == 0
        assert _cli("export", "--ckpt", str(tmp_path / "base.pt"), "--out", str(tmp_path / "base-codec.pt")) == 0
        assert _cli("train-xscale", *common, "--out", str(tmp_path / "tuned.pt"), "--steps", "3", "--lr", "0.01",
                    "--fine-tune", str(tmp_path / "base-codec.pt"), "--decoder-only", "--lambdas", "1,64,1024") == 0
        settings = torch.load(tmp_path / "tuned.pt", weights_only=True)["train"]["settings"]
        assert settings["decoder_only"] and settings["decoder"] == 8 and settings["latent"] == 8
        assert _cli("export", "--ckpt", str(tmp_path / "tuned.pt"), "--out", str(tmp_path / "tuned-codec.pt")) == 0
        base, tuned = CrossScaleCodec(tmp_path / "base-codec.pt"), CrossScaleCodec(tmp_path / "tuned-codec.pt")
        assert base.fingerprint != tuned.fingerprint
        frame = {n: FeatureShards(shards).features[n][0].float()[None] for n in "0123"}
        phi = dict.fromkeys(frame, 1.5)
        before, after = base.encode(frame, phi), tuned.encode(frame, phi)
        assert [container.unpack(r.payload)[1] for r in before] == [container.unpack(r.payload)[1] for r in after]
        assert not torch.equal(base.decode(before)["0"], tuned.decode(after)["0"])

    def test_fine_tune_needs_lambdas_and_decoder_only_needs_a_codec(self, shards, tmp_path):
        common = ["--shards", str(shards), "--out", str(tmp_path / "x.pt"), "--batch", "2", "--crop", "16",
                  "--steps", "1", "--no-progress"]
        assert _cli("train-xscale", *common, "--fine-tune", str(tmp_path / "missing.pt")) == 2
        assert _cli("train-xscale", *common, "--decoder-only", *self.ARCH) == 2
        assert not (tmp_path / "x.pt").exists()

    def test_ablations_build_the_smaller_network(self, shards, tmp_path):
        out = tmp_path / "ablation.pt"
        assert _cli("train-xscale", "--shards", str(shards), "--out", str(out), "--batch", "2", "--crop", "16",
                    "--steps", "1", "--no-progress", "--no-context", "--no-hyper-gains", *self.ARCH) == 0
        config = torch.load(out, weights_only=True)["config"]
        assert not config["context"] and not config["hyper_gains"]

    def test_stop_at_keeps_the_schedule_of_steps(self, shards, tmp_path):
        out = tmp_path / "stopped.pt"
        common = ["--shards", str(shards), "--out", str(out), "--batch", "2", "--crop", "16", "--steps", "10",
                  "--no-progress", *self.ARCH]
        assert _cli("train-xscale", *common, "--stop-at", "3") == 0
        blob = torch.load(out, weights_only=True)
        assert blob["train"]["step"] == 3 and blob["train"]["settings"]["steps"] == 10
        assert _cli("train-xscale", *common, "--resume", "--stop-at", "5") == 0
        assert torch.load(out, weights_only=True)["train"]["step"] == 5

    def test_crop_must_align_with_p5(self, shards, tmp_path):
        assert _cli("train-xscale", "--shards", str(shards), "--out", str(tmp_path / "x.pt"), "--crop", "12",
                    "--steps", "1", "--no-progress", *self.ARCH) == 2

    def test_pca_init_reconstructs_the_projection(self, shards):
        from fpnlink.shared.codec.crossscale import CrossScaleConfig, CrossScaleHyperprior
        from fpnlink.tools.codec.train_xscale import pca_bases

        data = FeatureShards(shards)
        model = CrossScaleHyperprior(CrossScaleConfig(latent=16, hyper=4, hidden=4, num_gains=3, decoder=8))
        model.set_normalisation(*data.normalisation())
        bases = pca_bases(data, model.feature_mean, model.feature_std, 4)
        model.init_from_pca(bases)
        x = model._normalise(data.features["1"][0].float()[None], torch.tensor([1]))
        with torch.no_grad():
            _, x_hat = model.synthesize(model.branches[1].g_a(x), None, 1, tuple(x.shape[-2:]))
        projection = bases[1] @ bases[1].T @ x[0].flatten(1)
        assert torch.allclose(x_hat[0].flatten(1), projection, atol=1e-3)
