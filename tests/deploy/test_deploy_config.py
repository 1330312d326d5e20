"""Deployment files, checked statically: no Docker engine runs here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_builds_existing_dockerfiles():
    for name, service in _compose()["services"].items():
        if "build" in service:
            dockerfile = REPO / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"service {name}: {dockerfile} missing"


def test_dockerfiles_copy_existing_paths_and_use_declared_entry_points():
    pyproject = (REPO / "pyproject.toml").read_text()
    for dockerfile in (REPO / "deploy").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        for source in re.findall(r"^COPY (\S+)", text, flags=re.M):
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        entry = re.search(r'ENTRYPOINT \["([\w-]+)"', text).group(1)
        assert re.search(rf'^{entry} = "', pyproject, flags=re.M), f"{entry} is not a declared script"
        extra = re.search(r'pip install --no-cache-dir "\.\[(\w+)\]"', text).group(1)
        assert f"\n{extra} = [" in pyproject, f"extra {extra} is not declared"


def test_ports_agree_between_compose_dockerfile_and_prometheus():
    compose = _compose()
    cloud_ports = {p.split(":")[1] for p in compose["services"]["cloud"]["ports"]}
    dockerfile = (REPO / "deploy" / "cloud.Dockerfile").read_text()
    grpc_port = re.search(r"FPNLINK_CLOUD_GRPC_PORT=(\d+)", dockerfile).group(1)
    http_port = re.search(r"FPNLINK_CLOUD_HTTP_PORT=(\d+)", dockerfile).group(1)
    assert {grpc_port, http_port} == cloud_ports
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"cloud:{http_port}"]
    edge_command = " ".join(compose["services"]["edge"]["command"])
    assert re.search(r"--server (\S+)", edge_command).group(1) == f"cloud:{grpc_port}"


def test_mounted_files_exist():
    for name in ("prometheus", "grafana"):
        for volume in _compose()["services"][name]["volumes"]:
            assert (REPO / volume.split(":")[0]).exists(), f"{name}: {volume}"


def test_grafana_provisions_the_datasource_the_dashboard_uses():
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["uid"] for d in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "fpnlink.yml").read_text())["providers"][0]
    mounts = dict(v.split(":")[:2][::-1] for v in _compose()["services"]["grafana"]["volumes"])
    assert (REPO / mounts[provider["options"]["path"]] / "fpnlink-cloud.json").is_file()


def test_cloud_runs_on_the_gpu_with_the_store():
    cloud = _compose()["services"]["cloud"]
    assert cloud["environment"]["FPNLINK_CLOUD_DEVICE"] == "cuda"
    assert cloud["environment"]["FPNLINK_CLOUD_DATABASE_URL"].startswith("postgresql://")
    assert cloud["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
