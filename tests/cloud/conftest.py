"""Cloud fixtures: the edge-side features of one tiny image; real databases (SQLite file, PostgreSQL server).

The model bundle is the session-wide ``tiny_bundle`` (random:0, 128 px input) from ``tests/conftest.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from cloud_helpers import IMAGE_SHAPE, EdgeOutput

from fpnlink.shared.model import ModelBundle
from fpnlink.tools.postgres import TemporaryPostgres


@pytest.fixture(scope="session")
def edge_output(tiny_bundle: ModelBundle) -> EdgeOutput:
    image = torch.rand(IMAGE_SHAPE, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        features, image_sizes, original_sizes = tiny_bundle.edge_half(["detect"])([image])
    return EdgeOutput(features, image_sizes[0], original_sizes[0], tiny_bundle.backbone_fingerprints["faster"])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TemporaryPostgres]:
    """One real PostgreSQL server (installed binaries) for the session; each test gets its own database."""
    with TemporaryPostgres(fsync=False) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file under ``tmp_path``, or a new database on the real server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'results.db'}"
        return
    server: TemporaryPostgres = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    yield server.url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()
