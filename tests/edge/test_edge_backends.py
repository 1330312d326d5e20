"""Front half without heads, and the ONNX Runtime backend: same features and fingerprints as torch."""

from __future__ import annotations

import json

import pytest
import torch

from fpnlink.edge.agent import EdgeAgent
from fpnlink.edge.backends import choose_providers, export_onnx, load_onnx_front, onnx_metadata, quantize_int8
from fpnlink.edge.cli import main
from fpnlink.shared.codec import make_codec
from fpnlink.shared.errors import UnsupportedError, WeightsError
from fpnlink.shared.model import ModelConfig, load_bundle
from fpnlink.shared.model.front import load_front_half

CONFIG = ModelConfig(min_size=128, max_size=128)
FEATURE_RTOL = 1e-4


@pytest.fixture(scope="module")
def front():
    return load_front_half("random:0", CONFIG, ("faster", "mask"))


@pytest.fixture(scope="module")
def onnx_path(front, tmp_path_factory):
    return export_onnx(front, tmp_path_factory.mktemp("onnx") / "front.onnx", sample_size=(96, 128))


class TestFrontHalf:
    @pytest.mark.parametrize("archs", [("faster",), ("keypoint",), ("faster", "mask")])
    def test_fingerprints_equal_the_whole_detectors(self, archs):
        front, bundle = load_front_half("random:3", CONFIG, archs), load_bundle("random:3", CONFIG, archs=archs)
        assert front.backbone_fingerprint == bundle.backbone_fingerprints[archs[0]]
        assert front.backbone_weight_fingerprint == bundle.backbone_weight_fingerprints[archs[0]]

    def test_synthetic_weights(self):
        front, bundle = load_front_half("synthetic", CONFIG), load_bundle("synthetic", CONFIG, archs=("faster",))
        assert front.trained and front.backbone_fingerprint == bundle.backbone_fingerprints["faster"]

    def test_same_features_and_no_heads(self, front, tiny_image):
        bundle = load_bundle("random:0", CONFIG, archs=("faster",))
        with torch.no_grad():
            mine, sizes, _ = front.edge([tiny_image])
            theirs, their_sizes, _ = bundle.edge_half(["detect"]).eval()([tiny_image])
        assert sizes == their_sizes and all(torch.equal(mine[k], theirs[k]) for k in theirs)
        assert not any(name.startswith(("rpn", "roi_heads")) for name, _ in front.edge.named_parameters())

    def test_tasks_outside_the_front_half(self, front):
        with pytest.raises(UnsupportedError, match="serves \\['faster', 'mask'\\], not \\['keypoint'\\]"):
            EdgeAgent(front, make_codec("quant"), ["keypoints"], "s")

    def test_bad_weights(self, tmp_path):
        with pytest.raises(WeightsError, match="no checkpoint"):
            load_front_half(str(tmp_path / "none.pt"))
        (tmp_path / "junk.pt").write_bytes(b"junk")
        with pytest.raises(WeightsError, match="cannot read checkpoint"):
            load_front_half(str(tmp_path / "junk.pt"))


class TestOnnxRuntime:
    def test_features_match_torch(self, front, onnx_path, tiny_image):
        ort_front = load_onnx_front(onnx_path)
        with torch.no_grad():
            reference, sizes, originals = front.edge([tiny_image])
        features, ort_sizes, ort_originals = ort_front.edge([tiny_image])
        assert (ort_sizes, ort_originals) == (sizes, originals)
        for name, expected in reference.items():
            assert features[name].shape == expected.shape
            error = float((features[name] - expected).abs().max()) / float(expected.abs().max())
            assert error < FEATURE_RTOL, (name, error)

    def test_same_fingerprints_and_frames_for_both_backends(self, front, onnx_path, tiny_image):
        ort_front = load_onnx_front(onnx_path)
        assert ort_front.backbone_fingerprint == front.backbone_fingerprint
        assert ort_front.backbone_weight_fingerprint == front.backbone_weight_fingerprint
        codec = make_codec("quant")
        frames = [EdgeAgent(f, codec, ["detect", "segment"], "s").encode(tiny_image, 1, dict.fromkeys("0123", 8.0))
                  for f in (front, ort_front)]
        assert frames[0].frame.model_fingerprint == frames[1].frame.model_fingerprint
        assert frames[0].frame.input_size == frames[1].frame.input_size

    def test_int8_copy_keeps_the_fingerprints(self, front, onnx_path, tiny_image, tmp_path):
        calibration = [front.edge.transform([tiny_image])[0].tensors]
        int8 = load_onnx_front(quantize_int8(onnx_path, tmp_path / "int8.onnx", calibration))
        assert int8.backbone_fingerprint == front.backbone_fingerprint
        assert onnx_metadata(tmp_path / "int8.onnx")["precision"] == "int8"
        with torch.no_grad():
            reference, _, _ = front.edge([tiny_image])
        features, _, _ = int8.edge([tiny_image])
        errors = [float((features[k] - v).abs().max() / v.abs().max()) for k, v in reference.items()]
        assert 0 < max(errors) < 0.5  # quantised (not bit-equal), yet the same maps

    def test_metadata(self, onnx_path, front):
        meta = onnx_metadata(onnx_path)
        assert meta["weights"] == "random:0" and meta["min_size"] == 128 and meta["archs"] == ["faster", "mask"]

    def test_not_an_onnx_model(self, tmp_path):
        (tmp_path / "x.onnx").write_bytes(b"not a model")
        with pytest.raises(WeightsError, match="not a loadable ONNX model"):
            load_onnx_front(tmp_path / "x.onnx")
        with pytest.raises(WeightsError, match="no ONNX model at"):
            load_onnx_front(tmp_path / "none.onnx")

    def test_provider_order(self):
        offered = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
        assert choose_providers(offered) == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                             "CPUExecutionProvider"]
        assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
        assert choose_providers()[-1] == "CPUExecutionProvider"


class TestCli:
    def test_run_with_onnxruntime(self, peer, onnx_path, image_dir, tmp_path):
        servicer, target, _ = peer
        servicer.model_fingerprint = load_onnx_front(onnx_path).backbone_fingerprint
        out = tmp_path / "results.jsonl"
        assert main(["run", "--source", str(image_dir), "--server", target, "--backend", "onnxruntime",
                     "--onnx", str(onnx_path), "--out", str(out), "--tasks", "detect,segment", "--codec", "quant"]) == 0
        assert len(out.read_text().splitlines()) == 2

    def test_onnx_for_other_sizes_is_refused(self, peer, onnx_path, image_dir, capsys):
        servicer, target, _ = peer
        servicer.min_size = servicer.max_size = 96
        assert main(["run", "--source", str(image_dir), "--server", target, "--backend", "onnxruntime",
                     "--onnx", str(onnx_path)]) == 1
        assert "export it again with those sizes" in capsys.readouterr().err

    def test_onnx_needs_its_backend(self, image_dir, onnx_path, capsys):
        assert main(["run", "--source", str(image_dir), "--onnx", str(onnx_path)]) == 2
        assert "--backend onnxruntime" in capsys.readouterr().err

    def test_export_command(self, tmp_path, capsys):
        out = tmp_path / "m.onnx"
        assert main(["export", "--weights", "random:0", "--min-size", "64", "--max-size", "64", "--out", str(out)]) == 0
        assert json.loads(json.dumps(onnx_metadata(out)))["min_size"] == 64 and "wrote" in capsys.readouterr().out
        assert main(["export", "--weights", "random:x", "--out", str(out)]) == 2
