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


async def test_a_job_that_fails_is_logged_and_the_host_goes_on(
    host: LoopHost, caplog: pytest.LogCaptureFixture
) -> None:
    ran = anyio.Event()

    async def fails() -> None:
        raise ValueError("job went wrong")

    async def runs() -> None:
        ran.set()

    host.start_soon(fails, name="failing-job")
    with anyio.fail_after(5):
        while not any("failed" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
            await anyio.sleep(0.01)
        host.start_soon(runs, name="later-job")
        await ran.wait()
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None and "job went wrong" in str(failed[0].exc_info[1])
    assert "failing-job" in failed[0].getMessage()  # named as it was started, on both loops


async def test_the_host_cancels_its_jobs_when_it_ends() -> None:
    host = LoopHost()
    await host.start()
    started, cancelled = anyio.Event(), anyio.Event()

    async def forever() -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    host.start_soon(forever, name="forever-job")
    with anyio.fail_after(5):
        await started.wait()
        host.cancel()
        await cancelled.wait()
