"""The CI static checks (``fpnlink.tools.deploycheck``): promtool, dashboard metrics, compose schema, Helm chart.

Each check is also shown to fail on a broken input, so that a green run means something.
"""

from __future__ import annotations

import copy
import json

import pytest
from pki import TestCA

from fpnlink.tools import deploycheck


def test_promtool_check_config():
    deploycheck.check_prometheus_config()


def test_promtool_refuses_a_broken_config(tmp_path):
    broken = tmp_path / "prometheus.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: soon\n")
    with pytest.raises(deploycheck.CheckError, match="check config"):
        deploycheck.check_prometheus_config(broken)


def test_dashboard_references_only_exported_metrics():
    assert deploycheck.check_dashboard() >= 18


def test_exported_names_include_the_operators_metrics():
    names = deploycheck.exported_metric_names()
    for name in ("fpnlink_cloud_capture_to_result_seconds_bucket", "fpnlink_cloud_queue_wait_seconds_bucket",
                 "fpnlink_cloud_queue_depth", "fpnlink_cloud_frame_size_bytes_bucket",
                 "fpnlink_cloud_frames_total", "fpnlink_cloud_auth_failures_total"):
        assert name in names


@pytest.mark.parametrize("expr, message", [
    ("rate(fpnlink_cloud_no_such_metric_total[5m])", "does not export"),
    ("sum(rate(fpnlink_cloud_frames_total[5m]", "check rules"),
])
def test_a_bad_dashboard_query_fails(tmp_path, expr, message):
    dashboard = json.loads(deploycheck.DASHBOARD.read_text())
    broken = copy.deepcopy(dashboard)
    broken["panels"][0]["targets"][0]["expr"] = expr
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(deploycheck.CheckError, match=message):
        deploycheck.check_dashboard(path)


def test_compose_file_matches_its_schema():
    deploycheck.check_compose()


def test_compose_schema_catches_a_typo(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(deploycheck.COMPOSE.read_text().replace("    environment:", "    enviroment:", 1))
    with pytest.raises(deploycheck.CheckError, match="compose-spec"):
        deploycheck.check_compose(broken)


@pytest.fixture(scope="module")
def tls_values(tmp_path_factory):
    ca = TestCA(tmp_path_factory.mktemp("chart-pki"), "chart")
    server = ca.issue("localhost", server=True)
    return {"security": {"tls": {"cert": server.cert.read_text(), "key": server.key.read_text(),
                                 "clientCa": ca.cert.read_text()}}}


class TestHelmChart:
    def test_renders_valid_manifests(self, tls_values):
        docs = deploycheck.render_chart(values=tls_values)
        kinds = deploycheck.check_manifests(docs)
        assert sorted(kinds) == sorted(["Deployment", "Service", "Service", "Service", "HorizontalPodAutoscaler",
                                        "ServiceMonitor", "PodDisruptionBudget", "Secret", "ConfigMap"])

    def test_deployment_requests_a_gpu_and_probes_grpc_health(self, tls_values):
        docs = {(d["kind"], d["metadata"]["name"]): d for d in deploycheck.render_chart(values=tls_values)}
        container = docs[("Deployment", "fpnlink-cloud")]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert container["readinessProbe"]["grpc"] == {"port": 50052, "service": "fpnlink.v1.FeatureLink"}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["FPNLINK_CLOUD_TLS_CLIENT_CA"] == "/etc/fpnlink/security/ca.crt"
        assert env["FPNLINK_CLOUD_HEALTH_PORT"] == "50052"
        assert float(env["FPNLINK_CLOUD_MAX_CONNECTION_AGE_S"]) > 0
        hpa = docs[("HorizontalPodAutoscaler", "fpnlink-cloud")]["spec"]["metrics"][0]["pods"]
        assert hpa["metric"]["name"] == "fpnlink_cloud_queue_wait_seconds_p95"
        rules = docs[("ConfigMap", "fpnlink-cloud-adapter-rules")]["data"]["config.yaml"]
        assert "fpnlink_cloud_queue_wait_seconds_bucket" in rules
        assert set(docs[("Secret", "fpnlink-cloud-security")]["data"]) == {"tls.crt", "tls.key", "ca.crt",
                                                                             "tokens.json"}

    def test_plaintext_without_autoscaling(self):
        values = {"security": {"tls": {"enabled": False}, "tokens": {"enabled": False}},
                  "autoscaling": {"enabled": False}}
        kinds = deploycheck.check_manifests(deploycheck.render_chart(values=values))
        assert "Secret" not in kinds and "HorizontalPodAutoscaler" not in kinds

    def test_tls_without_a_certificate_fails_to_render(self):
        with pytest.raises(Exception, match="security.tls.cert"):
            deploycheck.render_chart()

    def test_schema_validation_catches_a_bad_field(self, tls_values):
        docs = deploycheck.render_chart(values=tls_values)
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        deployment["spec"]["replicaz"] = 3
        with pytest.raises(deploycheck.CheckError, match="replicaz"):
            deploycheck.check_manifests([deployment])
