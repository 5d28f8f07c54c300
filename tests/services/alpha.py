"""Service "alpha": producers, run on the Trio backend (the tests start it with -P prefork)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from datagraph import IO, IOVal

from . import specs
from ._service import attach, store


@specs.split
async def _split(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("even" if i % 2 == 0 else "odd", i)


@specs.nums
async def _nums(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("a", i)
        yield IOVal("b", 100 * i)


@specs.left
async def _left(n: IO[int]) -> AsyncIterator[IOVal[str]]:
    for i in range(await n.first()):
        yield IOVal("l", f"l{i}")


@specs.join
async def _join(l: IO[str], r: IO[str]) -> AsyncIterator[IOVal[str]]:  # noqa: E741
    async for item in l.as_available(r):
        yield IOVal("both", item.value)


@specs.prod
async def _prod(job: IO[dict[str, Any]]) -> AsyncIterator[IOVal[tuple[str, int]]]:
    """Emits item i only once the consumer (another service) has handled item i-1."""
    spec = await job.first()
    tag = spec["tag"]
    client = await store()
    for i in range(spec["n"]):
        await client.custom_command(["RPUSH", f"dgtest:{tag}", f"produce {i}"])
        yield IOVal("items", (tag, i))
        with anyio.fail_after(10):
            while True:
                seen = await client.custom_command(["LRANGE", f"dgtest:{tag}", "0", "-1"])
                if f"consume {i}".encode() in seen:
                    break
                await anyio.sleep(0.005)


@specs.slow
async def _slow(job: IO[dict[str, Any]]) -> AsyncIterator[IOVal[tuple[str, int]]]:
    spec = await job.first()
    tag = spec["tag"]
    for i in range(spec["n"]):
        await anyio.sleep(0.02)
        yield IOVal("xs", (tag, i))
    client = await store()
    await client.custom_command(["RPUSH", f"dgtest:{tag}:produced", repr(time.time())])


@specs.ticker
async def _ticker(n: IO[float]) -> AsyncIterator[IOVal[int]]:
    """Streams until it is killed (or its run ends)."""
    period = await n.first()
    i = 0
    while True:
        yield IOVal("ticks", i)
        i += 1
        await anyio.sleep(period)


@specs.faulty
async def _faulty(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Yields n values at once, then fails."""
    count = await n.first()
    for i in range(count):
        yield IOVal("fx", i)
    raise ValueError(f"c_faulty gave up after {count} values")


app = attach("alpha", backend="trio")
