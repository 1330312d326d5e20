"""Link-adaptive rate decisions, and the edge's Prometheus metrics read from a real run."""

from __future__ import annotations

import httpx
import pytest

from fpnlink.edge import Client, EdgeAgent
from fpnlink.edge.cli import main
from fpnlink.edge.metrics import registry_for, serve_metrics
from fpnlink.edge.rate import LinkRate, parse_max_kbps
from fpnlink.edge.results import ResultLog
from fpnlink.edge.sources import ImageSource
from fpnlink.edge.spool import Spool
from fpnlink.edge.stream import StreamLoop
from fpnlink.shared.codec import make_codec


class TestLinkRate:
    def test_fixed_rate_ignores_the_link(self):
        rate = LinkRate(800.0, auto=False)
        assert rate.update(link_kbps=50.0, spooled_frames=100) == 800.0

    def test_auto_falls_to_the_link_and_stays_bounded(self):
        rate = LinkRate(None, auto=True)
        kbps = [rate.update(link_kbps=200.0, spooled_frames=10) for _ in range(10)]
        assert kbps[0] == pytest.approx(700.0)  # at most a 30% cut per frame
        assert kbps[-1] == pytest.approx(0.85 * 200.0)  # then headroom below the link's throughput
        assert all(a >= b for a, b in zip(kbps, kbps[1:]))

    def test_auto_probes_up_to_the_cap_while_the_link_keeps_up(self):
        rate = LinkRate(1100.0, auto=True)
        assert rate.kbps == 1100.0  # starts at the cap
        rate.kbps = 1000.0  # as after an outage
        kbps = [rate.update(link_kbps=900.0, spooled_frames=0) for _ in range(5)]
        assert kbps[0] == pytest.approx(1050.0) and kbps[-1] == 1100.0

    @pytest.mark.parametrize("text, parsed", [("800", (800.0, False)), ("auto", (None, True)),
                                              ("auto:640", (640.0, True))])
    def test_parse(self, text, parsed):
        assert parse_max_kbps(text) == parsed

    @pytest.mark.parametrize("text", ["fast", "auto:x", ""])
    def test_parse_refuses(self, text):
        with pytest.raises(ValueError, match="max_kbps must be"):
            parse_max_kbps(text)

    def test_bad_rates(self):
        with pytest.raises(ValueError):
            LinkRate(None, auto=False)
        with pytest.raises(ValueError):
            LinkRate(0.0, auto=False)

    @pytest.mark.parametrize("extra, message", [
        (["--max-kbps", "800", "--codec", "quant"], "max_kbps needs an MFIBA profile and none ships for codec quant"),
        (["--max-kbps", "nope"], "max_kbps must be a number"),
        (["--max-kbps", "800", "--phi", "4"], "drop budget and phi"),
    ])
    def test_cli_checks(self, image_dir, closed_target, capsys, extra, message):
        assert main(["run", "--source", str(image_dir), "--server", closed_target, *extra]) == 2
        assert message in capsys.readouterr().err


def test_metrics_count_a_real_run(peer, tiny_bundle, image_dir, tmp_path):
    servicer, target, _ = peer
    servicer.model_fingerprint = tiny_bundle.backbone_fingerprint_for(["detect"])
    agent = EdgeAgent(tiny_bundle, make_codec("quant"), ["detect"], "metrics")
    with Client(target) as client, Spool(tmp_path / "s.sqlite") as spool:
        results = ResultLog(None, resume=False)
        loop = StreamLoop(agent, ImageSource(image_dir), spool, client, results, phi=dict.fromkeys("0123", 4.0),
                          progress=False)
        port = serve_metrics(loop, 0, host="127.0.0.1")
        counts = loop.run()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert registry_for(loop).get_sample_value("fpnlink_edge_link_kbps") > 0
    assert counts.ok == 2
    assert "fpnlink_edge_frames_encoded_total 2.0" in text and "fpnlink_edge_frames_sent_total 2.0" in text
    assert 'fpnlink_edge_frames_acked_total{result="ok"} 2.0' in text
    assert "fpnlink_edge_frames_dropped_total 0.0" in text and "fpnlink_edge_spool_frames 0.0" in text
    assert f"fpnlink_edge_bytes_acked_total {float(counts.bytes)}" in text
    assert 'fpnlink_edge_phi{scale="0"} 4.0' in text
