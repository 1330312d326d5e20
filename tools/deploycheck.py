"""Static checks of the deployment files, run by CI (``python -m fpnlink.tools.deploycheck``) and the tests.

==========================  ========================================================================
check                       how
==========================  ========================================================================
Prometheus config           ``promtool check config`` (Debian package ``prometheus``)
dashboard metrics           every ``fpnlink_*`` name in the Grafana dashboard's queries is one the
                            cloud exports (:class:`~fpnlink.cloud.metrics.CloudMetrics`), and every
                            query parses (``promtool check rules`` on the queries as recording rules)
compose file                the compose-spec JSON schema vendored by ``check-jsonschema``
Helm chart                  rendered by Helm's own Go SDK (``helm-python-sdk``), linted, and every
                            manifest validated against the Kubernetes schemas of ``kubernetes-validate``
                            (strict: unknown fields fail); the ServiceMonitor, a CRD those schemas lack,
                            is checked for its required fields here
==========================  ========================================================================
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from fpnlink.cloud.metrics import CloudMetrics

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "fpnlink-cloud.json"
COMPOSE = REPO / "docker-compose.yml"
CHART = REPO / "deploy" / "helm" / "fpnlink"
KUBERNETES_VERSION = "1.33.0"
DATASOURCE_UID = "prometheus"
LINT_WARNING = 2
"""helm lint severities: 1 info, 2 warning, 3 error; strict, like ``helm lint --strict``, fails from 2."""
METRIC_NAME = re.compile(r"\bfpnlink_[a-z0-9_]+\b")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}


class CheckError(Exception):
    """A deployment file fails a check; the message lists every problem."""


def exported_metric_names() -> set[str]:
    """Every series name the cloud's metrics registry can export (``_total``, ``_bucket``... included)."""
    names = set()
    for family in CloudMetrics().registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, PromQL expression)`` of every query in a Grafana dashboard (rows included)."""
    return [(panel.get("title", "?"), target["expr"]) for panel in _panels(dashboard.get("panels", []))
            for target in panel.get("targets", []) if target.get("expr")]


def check_dashboard(path: Path = DASHBOARD) -> int:
    """Check the dashboard's metric names, datasources and query syntax; returns the number of queries."""
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckError(f"cannot load dashboard {path}: {exc}") from None
    queries = dashboard_queries(dashboard)
    if not queries:
        raise CheckError(f"dashboard {path} has no queries")
    exported = exported_metric_names()
    problems = [f"panel {title!r} queries {name}, which the cloud does not export"
                for title, expr in queries for name in METRIC_NAME.findall(expr) if name not in exported]
    problems += [f"panel {panel.get('title')!r} uses datasource {panel['datasource']}, not uid {DATASOURCE_UID!r}"
                 for panel in _panels(dashboard.get("panels", []))
                 if "datasource" in panel and panel["datasource"].get("uid") != DATASOURCE_UID]
    if problems:
        raise CheckError("\n".join(problems))
    check_promql([expr for _, expr in queries])
    return len(queries)


def _promtool(*args: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        raise CheckError("promtool is not installed (apt-get install prometheus; .ci/run does)")
    run = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise CheckError(f"promtool {' '.join(args)} failed:\n{run.stdout}{run.stderr}")


def check_promql(exprs: list[str]) -> None:
    """Parse PromQL expressions with promtool (as recording rules; Grafana's ``$__*`` variables substituted)."""
    rules = []
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"fpnlink:dashboard_query_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        _promtool("check", "rules", f.name)


def check_prometheus_config(path: Path = PROMETHEUS_CONFIG) -> None:
    _promtool("check", "config", str(path))


def check_compose(path: Path = COMPOSE) -> None:
    """Validate the compose file against the compose-spec schema."""
    run = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                          str(path)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise CheckError(f"{path} fails the compose-spec schema:\n{run.stdout}{run.stderr}")


def render_chart(chart: Path = CHART, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's manifests as Helm renders them (release ``fpnlink``, namespace ``fpnlink``)."""
    import helm_python as helm  # a 75 MB native library: loaded only when a chart is rendered

    report = helm.lint(str(chart), values=values or {}, strict=True)
    errors = report.get("errors", []) + [f"{m.get('path')}: {m.get('error')}" for m in report.get("messages", [])
                                         if m.get("severity", 0) >= LINT_WARNING]
    if errors:
        raise CheckError(f"helm lint {chart}:\n" + "\n".join(errors))
    with helm.Chart.load(str(chart)) as loaded:
        rendered = loaded.render(values or {}, name="fpnlink", namespace="fpnlink")
    return [doc for name, text in sorted(rendered.items()) if name.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text) if doc]


def check_manifests(docs: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Validate manifests against the Kubernetes schemas (strict); returns their kinds."""
    import kubernetes_validate

    problems = []
    for doc in docs:
        where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            problems += _check_service_monitor(doc, where)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{where}: {getattr(exc, 'message', exc)}")
    if problems:
        raise CheckError("\n".join(problems))
    return [doc["kind"] for doc in docs]


def _check_service_monitor(doc: dict[str, Any], where: str) -> list[str]:
    """The fields prometheus-operator's ServiceMonitor CRD requires, and endpoints that name a port."""
    spec = doc.get("spec", {})
    problems = [] if doc.get("kind") == "ServiceMonitor" else [f"{where}: unexpected kind"]
    if not isinstance(spec.get("selector"), dict):
        problems.append(f"{where}: spec.selector is required")
    endpoints = spec.get("endpoints")
    if not endpoints or not all(isinstance(e, dict) and (e.get("port") or e.get("targetPort")) for e in endpoints):
        problems.append(f"{where}: spec.endpoints must name a port each")
    return problems


PLACEHOLDER_TLS = {"security": {"tls": {"cert": "PEM", "key": "PEM", "clientCa": "PEM"}}}
"""Values that render the TLS + tokens configuration (the manifests' schema does not read the PEM)."""


def main() -> int:
    checks = [
        ("promtool check config", lambda: check_prometheus_config() or str(PROMETHEUS_CONFIG.relative_to(REPO))),
        ("dashboard", lambda: f"{check_dashboard()} queries, all metrics exported, all parse"),
        ("compose schema", lambda: check_compose() or str(COMPOSE.relative_to(REPO))),
        ("helm chart", lambda: ", ".join(check_manifests(render_chart(values=PLACEHOLDER_TLS)))
         + f" valid for Kubernetes {KUBERNETES_VERSION}"),
    ]
    failed = 0
    for name, check in checks:
        try:
            print(f"ok    {name}: {check()}")
        except CheckError as exc:
            failed += 1
            print(f"FAIL  {name}:\n{exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
