"""Shared fixtures. Every test gets an environment with no embedshare variables, so nothing
reaches ~/.cache or a service of another test."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # the helpers package, here and in spawned processes

from helpers import threads, waiting
from helpers.disks import mount_tmpfs, unmount
from helpers.embedders import RecordingEmbedder
from helpers.extras import requires
from helpers.services import ServiceFactory

from embedshare.env import ENV_ADDRESS, ENV_MODEL, ENV_NO_SERVICE_SAID, ENV_ON_FAILURE, ENV_REGISTRY, ENV_STORE
from embedshare.service.launcher import EmbeddingService

ENV_VARS = (ENV_ADDRESS, ENV_STORE, ENV_MODEL, ENV_REGISTRY, ENV_ON_FAILURE, ENV_NO_SERVICE_SAID)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked ``model`` runs the real local model: without its packages it is skipped,
    saying how to install them."""
    needs_the_model = requires("local")
    for item in items:
        if item.get_closest_marker("model") is not None:
            item.add_marker(needs_the_model)


@pytest.fixture(autouse=True)
def clean_embedshare_env(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    # Anything that falls back to the default store lands in this test's tmp dir.
    monkeypatch.setenv(ENV_STORE, str(tmp_path / "default-store"))
    from embedshare.access import reset_embedding_manager

    reset_embedding_manager()
    yield
    reset_embedding_manager()


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def make_service(store: Path) -> Iterator[ServiceFactory]:
    """``make_service(model="hash:64", registry="bundled", *, store=None, **options)``: a started
    EmbeddingService on the test's store (or ``store``) with the suite's start timeout. Every
    service it started is stopped when the test ends, passed or failed."""
    factory = ServiceFactory(store)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def hash_service(make_service: ServiceFactory) -> EmbeddingService:
    """A running service with the hashing embedder and the bundled registry."""
    return make_service()


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``helpers.waiting.wait_for(condition, timeout, what)``: poll a fact; fail after the deadline."""
    return waiting.wait_for


@pytest.fixture
def run_threads() -> Callable[..., list[Any]]:
    """``helpers.threads.run_threads(n, fn, timeout)``: fn(i) in n threads released together; their
    results, or the first exception one raised."""
    return threads.run_threads


@pytest.fixture
def recording_embedder() -> type[RecordingEmbedder]:
    """The ``RecordingEmbedder`` class (helpers/embedders.py): call it for one, e.g.
    ``recording_embedder(64, failure=EmbedderError(...))``."""
    return RecordingEmbedder


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, for the tests of a full disk: mounting needs root; skipped cleanly otherwise."""
    mount_point = tmp_path / "tmpfs"
    mount_tmpfs(mount_point, "size=4m")
    try:
        yield mount_point
    finally:
        unmount(mount_point)


@pytest.fixture
def token_file(tmp_path) -> Path:
    """A token file as a user makes one: 48 random hex characters, owner-only (0600)."""
    import secrets

    path = tmp_path / "token"
    path.write_text(secrets.token_hex(24) + "\n")
    path.chmod(0o600)
    return path
