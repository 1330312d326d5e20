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
    edge_command = compose["services"]["edge"]["command"]
    assert edge_command[edge_command.index("--server") + 1] == f"cloud:{grpc_port}"


def test_prometheus_mount_exists():
    volumes = _compose()["services"]["prometheus"]["volumes"]
    source = volumes[0].split(":")[0]
    assert (REPO / source).is_file()
