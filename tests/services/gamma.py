"""Service "gamma": workers the tests start one at a time, to kill or to starve of slots."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from datagraph import IO, IOVal

from . import specs
from ._service import attach


@specs.g_ticker
async def _g_ticker(n: IO[float]) -> AsyncIterator[IOVal[int]]:
    period = await n.first()
    i = 0
    while True:
        yield IOVal("g_ticks", i)
        i += 1
        await anyio.sleep(period)


@specs.g_source
async def _g_source(n: IO[float]) -> AsyncIterator[IOVal[int]]:
    period = await n.first()
    i = 0
    while True:
        yield IOVal("g", i)
        i += 1
        await anyio.sleep(period)


@specs.g_sink
async def _g_sink(g: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for i in g.stream():
        yield IOVal("g_out", i)


@specs.g_count
async def _g_count(g_job: IO[dict[str, float]]) -> AsyncIterator[IOVal[int]]:
    job = await g_job.first()
    for i in range(int(job["n"])):
        yield IOVal("g_counted", i)
        await anyio.sleep(job["period"])


app = attach("gamma", backend="asyncio")
