"""``fpnlink-edge run`` with --tls-ca/--tls-cert/--tls-key/--token: bad values, and a run against a mutual-TLS cloud."""

from __future__ import annotations

import json

import pytest
from pki import TestCA

from fpnlink.cloud import CloudService
from fpnlink.cloud.settings import CloudSettings
from fpnlink.cloud.tokens import add_token
from fpnlink.edge.cli import main

DEVICE = "cam-7"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("edge-pki")
    ca = TestCA(directory, "fleet")
    return {"ca": ca.cert, "server": ca.issue("localhost", server=True), "device": ca.issue(DEVICE)}


class TestBadValues:
    def test_client_certificate_needs_a_ca(self, image_dir, pki, capsys):
        device = pki["device"]
        code = main(["run", "--source", str(image_dir), "--tls-cert", str(device.cert), "--tls-key", str(device.key)])
        assert code == 2
        assert "needs tls_ca" in capsys.readouterr().err

    def test_certificate_without_key(self, image_dir, pki, capsys):
        code = main(["run", "--source", str(image_dir), "--tls-ca", str(pki["ca"]), "--tls-cert",
                     str(pki["device"].cert)])
        assert code == 2
        assert "go together" in capsys.readouterr().err

    def test_missing_file(self, image_dir, tmp_path, capsys):
        assert main(["run", "--source", str(image_dir), "--tls-ca", str(tmp_path / "absent.pem")]) == 2
        assert "is not a file" in capsys.readouterr().err

    def test_not_a_certificate(self, image_dir, pki, tmp_path, capsys):
        junk = tmp_path / "junk.crt"
        junk.write_text("junk")
        code = main(["run", "--source", str(image_dir), "--tls-ca", str(pki["ca"]), "--tls-cert", str(junk),
                     "--tls-key", str(pki["device"].key)])
        assert code == 2
        assert "not a PEM X.509 certificate" in capsys.readouterr().err


def test_run_against_a_mutual_tls_cloud(tiny_bundle, pki, image_dir, tmp_path, monkeypatch):
    tokens = tmp_path / "tokens.json"
    token = add_token(tokens, DEVICE, ["ingest"])
    settings = CloudSettings(host="127.0.0.1", grpc_port=0, http_port=0, min_size=128, max_size=128,
                             detections_per_img=5, warmup=False, grace_s=1.0, log_level="warning",
                             tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=pki["ca"],
                             token_file=tokens)
    out = tmp_path / "results.jsonl"
    monkeypatch.setenv("FPNLINK_EDGE_TOKEN", token)
    with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background() as cloud:
        device = pki["device"]
        code = main(["run", "--source", str(image_dir), "--server", f"localhost:{cloud.grpc_port}", "--weights",
                     "random:0", "--codec", "quant", "--tls-ca", str(pki["ca"]), "--tls-cert", str(device.cert),
                     "--tls-key", str(device.key), "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all("error" not in r for r in records)
    assert all(r["stream_id"].startswith(f"{DEVICE}:") for r in records)
