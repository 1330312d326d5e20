"""The README's main job, shrunk: one generated scene through the in-process cloud."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fpnlink.tools.cli import main
from fpnlink.tools.image_coding import encode_image


def test_demo_writes_summary_results_and_annotated_images(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--weights", "random:0", "--images", "2", "--size", "128",
                 "--tasks", "detect,segment", "--detections", "3", "--codec", "quant", "--phi", "4"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 2 and summary["errors"] == 0
    assert summary["trained"] is False
    assert 0 < summary["total_frame_bytes"] < summary["total_raw_feature_bytes"]
    scene = np.asarray(Image.open(out / "inputs" / "scene000.png").convert("RGB"))
    assert summary["per_frame"][0]["jpeg75_bytes"] == len(encode_image(scene, "JPEG", 75))
    assert summary["bytes_over_jpeg75"] == round(summary["total_frame_bytes"] / summary["total_jpeg75_bytes"], 3)
    assert summary["phi"] == 4.0 and summary["budget"] is None and summary["mfip"] is None
    printed = capsys.readouterr().out
    assert f"features / JPEG = {summary['bytes_over_jpeg75']:.3f}" in printed
    assert "operating point: codec quant" in printed and "phi 4 on every scale, 128 px input" in printed
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame_id"] for line in lines] == [1, 2]
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["scene000.png", "scene001.png"]
    assert len(list((out / "inputs").iterdir())) == 2
