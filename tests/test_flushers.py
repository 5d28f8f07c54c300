"""A processor's flusher task starts only when there is something to send before its close."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.store import keys

pytestmark = pytest.mark.anyio

#: Deadline for anything the tests wait for.
DEADLINE = 10.0


def _hold_the_loop(seconds: float) -> None:
    """Work for ``seconds`` without giving the event loop a turn."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


async def test_short_runs_start_no_flusher_task(supervisor: Supervisor) -> None:
    """Values yielded in one go ride with the closing flush: no flusher task, same results."""
    source = Processor("fl_source", ["fl_n"], ["fl_nums"])
    double = Processor("fl_double", ["fl_nums"], ["fl_out"])

    @source
    async def _source(fl_n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await fl_n.first()):
            yield IOVal("fl_nums", i)

    @double
    async def _double(fl_nums: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for value in fl_nums.stream():
            yield IOVal("fl_out", value * 2)

    flow = Flow.from_processors(source, double).resolve()
    runtime = await supervisor.runtime()
    with anyio.fail_after(DEADLINE):
        # The first read opens a blocking connection: a wait, during which the
        # reader's "running" state is sent by a flusher. Later reads find one open.
        out = await supervisor.start_flow(flow, [IOVal("fl_n", 1)])
        assert await out["fl_out"].collect() == [0]
        started = runtime.flushers.started
        for n in (1, 3, 1):
            out = await supervisor.start_flow(flow, [IOVal("fl_n", n)])
            assert await out["fl_out"].collect() == [2 * i for i in range(n)]
            run_id = out["fl_out"].run_id
            stats = await runtime.client.custom_command(["HGETALL", keys.stats(run_id)])
            assert stats[b"state:fl_source"] == b"done" and stats[b"state:fl_double"] == b"done"
            assert stats[b"written:fl_out"] == str(n).encode()
    assert runtime.flushers.started == started


async def test_a_value_goes_out_while_its_producer_waits(supervisor: Supervisor) -> None:
    """A producer that waits after yielding gets a flusher: its reader has the value before the end."""
    gate = anyio.Event()
    waiter = Processor("fl_waiter", [], ["fl_waited"])

    @waiter
    async def _waiter() -> AsyncIterator[IOVal[int]]:
        yield IOVal("fl_waited", 1)
        await gate.wait()
        yield IOVal("fl_waited", 2)

    runtime = await supervisor.runtime()
    started = runtime.flushers.started
    out = await supervisor.start_flow(Flow.from_processors(waiter).resolve())
    stream = out["fl_waited"].stream()
    with anyio.fail_after(DEADLINE):
        assert await stream.__anext__() == 1  # the gate is still closed
        assert runtime.flushers.started == started + 1
        gate.set()
        assert [value async for value in stream] == [2]


async def test_linger_bounds_a_producer_that_never_waits(supervisor: Supervisor) -> None:
    """Values that linger go out while the producer keeps the loop busy, without it ever waiting.

    Long before its buffer is full (``max_batch`` values), which would send it too.
    """
    seen = anyio.Event()
    ended_by: list[str] = []
    yielded = [0]
    busy = Processor("fl_busy", [], ["fl_busy_out"])

    @busy
    async def _busy() -> AsyncIterator[IOVal[int]]:
        deadline = time.monotonic() + DEADLINE
        # No await in here: the writer's linger check is the only turn the loop gets.
        while not seen.is_set():
            if time.monotonic() > deadline:
                ended_by.append("deadline")
                return
            yield IOVal("fl_busy_out", yielded[0])
            yielded[0] += 1
            _hold_the_loop(0.001)
        ended_by.append("seen")

    runtime = await supervisor.runtime()
    out = await supervisor.start_flow(Flow.from_processors(busy).resolve())
    stream = out["fl_busy_out"].stream()
    with anyio.fail_after(DEADLINE * 2):
        assert await stream.__anext__() == 0
        when_seen = yielded[0]
        seen.set()
        values = [0, *[value async for value in stream]]
    assert ended_by == ["seen"], "the first value reached the reader only once the producer ended"
    assert when_seen < runtime.settings.max_batch // 2, f"the first value went out {when_seen} values late"
    assert values == list(range(len(values)))
