"""``fpnlink-edge run``: argument errors exit 2, an unreachable or mismatched cloud exits 1, a run writes JSONL."""

from __future__ import annotations

import json

import pytest

from fpnlink.edge.cli import main

CLOUD_TOTAL_MS = 4.0  # the test peer's stage_ms["total"]
TINY = ["--weights", "random:0", "--codec", "quant"]  # what the test peer serves (the defaults are synthetic, xscale)


class TestUsageErrors:
    @pytest.mark.parametrize("extra, message", [
        (["--tasks", "detect,track"], "--tasks: tasks must be a comma-separated subset of detect,segment,keypoints"),
        (["--tasks", ""], "--tasks"),
        (["--codec", "jpeg"], "--codec: unknown codec 'jpeg'; choose one of"),
        (["--phi", "12"], "xscale: phi must lie in [0.0, 4.0]"),
        (["--codec", "quant", "--phi", "12"], "phi must lie in [1.0, 8.0]"),
        (["--min-size", "8"], "--min-size"),
        (["--threads", "0"], "--threads"),
        (["--codec-checkpoint", "/nonexistent/codec.pt", "--codec", "learned"], "is not a file"),
        (["--codec", "quant", "--codec-checkpoint", __file__], "codec 'quant' loads no weights"),
        (["--codec", "quant", "--budget", "0.1bpp"], "a budget needs an MFIBA profile and none ships for codec quant"),
        (["--profile", "/nonexistent/profile.json"], "profile /nonexistent/profile.json is not a file"),
    ])
    def test_bad_values(self, image_dir, closed_target, capsys, extra, message):
        assert main(["run", "--source", str(image_dir), "--server", closed_target, *extra]) == 2
        assert message in capsys.readouterr().err

    def test_missing_source_flag(self, capsys):
        assert main(["run", "--server", "localhost:1"]) == 2
        assert "--source" in capsys.readouterr().err

    def test_source_does_not_exist(self, tmp_path, capsys):
        assert main(["run", "--source", str(tmp_path / "nope")]) == 2
        assert "does not exist" in capsys.readouterr().err

    def test_empty_folder(self, tmp_path, capsys):
        assert main(["run", "--source", str(tmp_path)]) == 2
        assert "no image files" in capsys.readouterr().err

    def test_environment_is_validated_too(self, image_dir, monkeypatch, capsys):
        monkeypatch.setenv("FPNLINK_EDGE_CODEC", "nope")
        assert main(["run", "--source", str(image_dir)]) == 2
        assert "unknown codec 'nope'" in capsys.readouterr().err

    def test_no_command(self, capsys):
        assert main([]) == 2

    def test_unloadable_codec_checkpoint(self, image_dir, closed_target, capsys):
        args = ["run", "--source", str(image_dir), "--server", closed_target, "--codec", "learned"]
        assert main([*args, "--codec-checkpoint", __file__]) == 2
        assert "--codec-checkpoint: cannot load learned-codec checkpoint" in capsys.readouterr().err


class TestAgainstPeer:
    def test_unreachable_server(self, image_dir, closed_target, capsys):
        assert main(["run", "--source", str(image_dir), "--server", closed_target, "--connect-timeout", "0.3"]) == 1
        err = capsys.readouterr().err
        assert f"cannot reach the fpnlink cloud at {closed_target}" in err and "UNAVAILABLE" in err

    def test_fingerprint_mismatch(self, peer, image_dir, tmp_path, capsys):
        _, target, _ = peer
        out = tmp_path / "results.jsonl"
        assert main(["run", "--source", str(image_dir), "--server", target, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert "edge and cloud do not match: backbone fingerprint mismatch" in err and "feedfacefeedface" in err
        assert not out.exists()

    def test_sizes_must_follow_the_cloud(self, peer, image_dir, capsys):
        _, target, _ = peer
        assert main(["run", "--source", str(image_dir), "--server", target, "--min-size", "96"]) == 1
        assert "drop --min-size/--max-size" in capsys.readouterr().err

    def test_run_streams_and_writes_jsonl(self, peer, tiny_bundle, image_dir, tmp_path, capsys):
        servicer, target, _ = peer
        servicer.model_fingerprint = tiny_bundle.backbone_fingerprint_for(["detect", "segment"])
        (image_dir / "broken.png").write_bytes(b"junk")
        out = tmp_path / "run" / "results.jsonl"
        argv = ["run", "--source", str(image_dir), "--server", target, "--tasks", "detect,segment",
                "--weights", "random:0", "--codec", "quant", "--phi", "4", "--out", str(out), "--stream-id", "cam-7"]
        assert main(argv) == 0
        captured = capsys.readouterr()
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["image"] for line in lines] == ["a.png", "b.png"]
        assert servicer.received == [1, 2]
        for line in lines:
            assert line["frame_bytes"] == line["result"]["frame_bytes"] and 0 < line["frame_bytes"]
            assert line["raw_feature_bytes"] > 5 * line["frame_bytes"]
            stages = line["stage_ms"]
            assert {"backbone", "encode", "round_trip", "transport"} <= set(stages)
            assert stages["transport"] == pytest.approx(max(stages["round_trip"] - CLOUD_TOTAL_MS, 0.0))
            assert line["result"]["stream_id"] == "cam-7" and len(line["result"]["detect"]) == 1
        assert "a.png: " in captured.out and "detect 1, segment 1" in captured.out
        assert "2 frame(s) answered (2 ok, 0 failed), 0 dropped, 1 image(s) skipped" in captured.out
        assert "UNTRAINED WEIGHTS" in captured.err and "broken.png: not an image PIL can read" in captured.err

    def test_all_frames_failing_exits_1(self, peer, tiny_bundle, image_dir, capsys):
        servicer, target, _ = peer
        servicer.model_fingerprint = tiny_bundle.backbone_fingerprint_for(["detect"])
        servicer.fail_ids = {1, 2}
        assert main(["run", "--source", str(image_dir), "--server", target, *TINY]) == 1
        captured = capsys.readouterr()
        assert "ERROR INVALID_ARGUMENT" in captured.out and "every frame failed in the cloud" in captured.err


class TestSpoolErrors:
    def test_corrupt_spool_is_a_clear_error(self, peer, image_dir, tmp_path, capsys):
        _, target, _ = peer
        spool = tmp_path / "bad.sqlite"
        spool.write_bytes(b"garbage" * 200)
        assert main(["run", "--source", str(image_dir), "--server", target, "--spool", str(spool)]) == 1
        assert "is not a readable spool" in capsys.readouterr().err

    def test_bad_spool_settings(self, image_dir, closed_target, capsys):
        args = ["run", "--source", str(image_dir), "--server", closed_target]
        assert main([*args, "--spool-full", "block"]) == 2
        assert main([*args, "--spool-quota", "10"]) == 2
        assert "--spool-quota-bytes" in capsys.readouterr().err

    def test_rerun_after_a_finished_run_starts_afresh(self, peer, tiny_bundle, image_dir, tmp_path):
        servicer, target, _ = peer
        servicer.model_fingerprint = tiny_bundle.backbone_fingerprint_for(["detect"])
        out = tmp_path / "results.jsonl"
        argv = ["run", "--source", str(image_dir), "--server", target, "--out", str(out), *TINY]
        assert main(argv) == 0 and main(argv) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["image"] for line in lines] == ["a.png", "b.png"]  # the file starts afresh, the source too
        assert [line["frame_id"] for line in lines] == [3, 4] and servicer.received == [1, 2, 3, 4]
        assert len({line["stream_id"] for line in lines}) == 1
