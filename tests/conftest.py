"""Shared fixtures: one real Valkey per test session, both anyio backends."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from datagraph import LocalExecutor, Supervisor
from datagraph.embedded import EmbeddedValkey
from datagraph.embedded_cluster import EmbeddedCluster


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[EmbeddedValkey]:
    """The product's own embedded Valkey: it does not outlive a test session that is killed."""
    server = EmbeddedValkey()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[EmbeddedCluster]:
    """A Valkey Cluster of 3 primaries with a replica each, shared by the session (never killed)."""
    cluster = EmbeddedCluster(primaries=3, replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stores: run the test on a standalone Valkey and on a Valkey Cluster (valkey_url)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("stores") and "valkey_url" in metafunc.fixturenames:
        metafunc.parametrize("valkey_url", ["standalone", "cluster"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def valkey_url(request: pytest.FixtureRequest, valkey_server: object) -> str:
    """The session's store: the standalone Valkey, or the cluster for tests marked ``stores``."""
    if getattr(request, "param", "standalone") == "cluster":
        cluster: EmbeddedCluster = request.getfixturevalue("valkey_cluster")
        return cluster.url
    return f"redis://127.0.0.1:{valkey_server.port}/0"  # type: ignore[attr-defined]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def supervisor(valkey_url: str, anyio_backend: str) -> AsyncIterator[Supervisor]:
    """A supervisor with the LocalExecutor on the session's Valkey, closed in its own loop."""
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"test-secret"
    )
    try:
        yield supervisor
    finally:
        await Supervisor.adetach()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DATAGRAPH_"):
            monkeypatch.delenv(name)
