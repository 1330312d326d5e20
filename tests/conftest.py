"""Shared fixtures: one tiny random-weight bundle per session (CPU, 128 px network input); real databases for
the results store (an SQLite file, a PostgreSQL server from the installed binaries); a cloud's default store
goes to a temporary folder, never the working directory."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fpnlink.shared.model import ModelBundle, ModelConfig, load_bundle
from fpnlink.tools.postgres import TemporaryPostgres

TINY_CONFIG = ModelConfig(min_size=128, max_size=128, detections_per_img=5)


@pytest.fixture(scope="session", autouse=True)
def _cloud_store_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``CloudSettings()`` built by any test stores into a session folder (``FPNLINK_CLOUD_DATABASE_PATH``)."""
    os.environ.setdefault("FPNLINK_CLOUD_DATABASE_PATH", str(tmp_path_factory.mktemp("cloud-store") / "cloud.db"))


@pytest.fixture(scope="session")
def tiny_bundle() -> ModelBundle:
    torch.set_num_threads(2)
    return load_bundle("random:0", TINY_CONFIG)


@pytest.fixture
def tiny_image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.rand(3, 96, 128, generator=generator)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TemporaryPostgres]:
    """One real PostgreSQL server (installed binaries) for the session; each test gets its own database."""
    with TemporaryPostgres(fsync=False) as server:
        yield server


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path, server: TemporaryPostgres | None) -> Iterator[str]:
    """The URL of an empty database: an SQLite file (not yet created) in ``folder``, or a new database on
    ``server``, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'store' / 'results.db'}"
        return
    with server.scratch_database(f"test_{uuid.uuid4().hex[:12]}") as url:
        yield url


DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test: an SQLite file under ``tmp_path``, or one on the real server."""
    server = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with fresh_database(request.param, tmp_path, server) as url:
        yield url


@pytest.fixture(scope="module", params=DATABASES)
def module_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """:func:`database_url` shared by the tests of one module."""
    server = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with fresh_database(request.param, tmp_path_factory.mktemp("db"), server) as url:
        yield url
