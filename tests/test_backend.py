"""datagraph._backend: the host's cheap wake-up, on both loops."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest

from datagraph._backend import LoopHost

pytestmark = pytest.mark.anyio


@pytest.fixture
async def host() -> AsyncIterator[LoopHost]:
    host = LoopHost()
    await host.start()
    yield host
    host.cancel()


async def test_a_wake_ends_the_wait_when_set_and_not_before(host: LoopHost) -> None:
    wake = host.wake()
    woken_at: list[float] = []

    async def waiter() -> None:
        await wake.wait(5.0)
        woken_at.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.05)
        assert woken_at == []
        set_at = time.monotonic()
        wake.set()
        wake.set()  # again: harmless
    assert 0 <= woken_at[0] - set_at < 1.0


async def test_a_wake_nobody_sets_ends_the_wait_after_its_limit(host: LoopHost) -> None:
    started = time.monotonic()
    with anyio.fail_after(5):
        await host.wake().wait(0.1)
    assert 0.09 <= time.monotonic() - started < 2.0


async def test_a_waiter_on_a_wake_is_cancelled_as_in_any_wait(host: LoopHost) -> None:
    wake = host.wake()
    with anyio.move_on_after(0.05) as scope:
        await wake.wait(5.0)
    assert scope.cancelled_caught
    wake.set()  # after its waiter is gone: harmless
