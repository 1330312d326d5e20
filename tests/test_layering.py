"""Import layering: shared imports neither side; edge and cloud never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "shared": ("fpnlink.edge", "fpnlink.cloud", "fpnlink.tools"),
    "edge": ("fpnlink.cloud", "fpnlink.tools"),
    "cloud": ("fpnlink.edge", "fpnlink.tools"),
}


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    package = ["fpnlink", *path.relative_to(REPO).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.add(".".join([*base, *([node.module] if node.module else [])]))
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    offenders = []
    for path in (REPO / package).rglob("*.py"):
        if "_pb" in path.parts:
            continue
        for name in _imports(path):
            if name.startswith(FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_relative_imports_are_resolved(tmp_path):
    module = REPO / "shared" / "wire" / "convert.py"
    assert "fpnlink.shared.codec.base" in _imports(module)


@pytest.mark.parametrize("transport", ["server.py", "api.py", "analytics.py", "recorder.py"])
def test_cloud_transports_do_not_import_the_service(transport):
    """service -> transports -> backend protocol, one way (TYPE_CHECKING imports included)."""
    assert "fpnlink.cloud.service" not in _imports(REPO / "cloud" / transport)
