"""Service "beta": consumers, run on the asyncio backend (the tests start it with -P threads)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio

from datagraph import IO, IOVal

from . import specs
from ._service import attach, store


@specs.pair
async def _pair(a: IO[int], b: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x, y in a.stream_with(b):
        yield IOVal("sum", x + y)


@specs.right
async def _right(n: IO[int]) -> AsyncIterator[IOVal[str]]:
    for i in range(await n.first()):
        yield IOVal("r", f"r{i}")


@specs.cons
async def _cons(items: IO[tuple[str, int]]) -> AsyncIterator[IOVal[int]]:
    client = await store()
    async for tag, i in items.stream():
        await client.custom_command(["RPUSH", f"dgtest:{tag}", f"consume {i}"])
        yield IOVal("done", i)


@specs.total
async def _total(xs: IO[tuple[str, int]]) -> AsyncIterator[IOVal[int]]:
    started = time.time()
    values = await xs.collect()
    client = await store()
    await client.custom_command(["RPUSH", f"dgtest:{values[0][0]}:started", repr(started)])
    yield IOVal("sum", sum(i for _, i in values))


@specs.echo
async def _echo(ticks: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for i in ticks.stream():
        yield IOVal("echoed", i)


@specs.drain
async def _drain(fx: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Passes values on slowly: it is still draining its input well after that input failed."""
    async for i in fx.stream():
        await anyio.sleep(0.1)
        yield IOVal("drained", i)


app = attach("beta", backend="asyncio")
