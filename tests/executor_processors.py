"""Processors of the executor-agnostic suite (``tests/test_executors.py``).

Implemented at the top level of an importable module, as every executor but
``LocalExecutor`` needs: ProcessExecutor's workers import this module, and the
Celery service ``tests/services/omni.py`` does too.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import sniffio

from datagraph import IO, Depends, IOVal, Processor


def get_multiplier() -> int:
    return 2


# The seed README's example.
foobar = Processor(name="x_foobar", inputs=["foo"], outputs=["bar"])


@foobar
async def _foobar(
    foo: IO[int], multiplier: Annotated[int, Depends(get_multiplier)]
) -> AsyncIterator[IOVal[int]]:
    for i in range(await foo.first()):
        yield IOVal(name="bar", value=i * multiplier)


# Fan-out (xs is read by two processors) and fan-in (a zip of their outputs).
source = Processor("x_source", ["n"], ["xs"])
square = Processor("x_square", ["xs"], ["squares"])
negate = Processor("x_negate", ["xs"], ["negated"])
pair = Processor("x_pair", ["squares", "negated"], ["pairs"])


@source
async def _source(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("xs", i)


@square
async def _square(xs: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in xs:
        yield IOVal("squares", x * x)


@negate
def _negate(xs: IO[int]):  # type: ignore[no-untyped-def]  # a sync generator, in a thread
    for x in xs:
        yield IOVal("negated", -x)


@pair
async def _pair(squares: IO[int], negated: IO[int]) -> AsyncIterator[IOVal[tuple[int, int]]]:
    async for s, m in squares.stream_with(negated):
        yield IOVal("pairs", (s, m))


# Partitions: x_total (wait=True) starts once x_slow's stream is complete.
slow = Processor("x_slow", ["count"], ["values", "slow_done"])
total = Processor("x_total", ["values"], ["total"], wait=True)


@slow
async def _slow(count: IO[int]) -> AsyncIterator[IOVal[float]]:
    for i in range(await count.first()):
        await anyio.sleep(0.01)
        yield IOVal("values", i)
    yield IOVal("slow_done", time.time())


@total
async def _total(values: IO[int]) -> AsyncIterator[IOVal[tuple[int, float]]]:
    started = time.time()
    yield IOVal("total", (sum(await values.collect()), started))


# Failure: x_faulty yields, then raises; x_relay downstream passes on what came before.
faulty = Processor("x_faulty", ["k"], ["fx"])
relay = Processor("x_relay", ["fx"], ["relayed"])


@faulty
async def _faulty(k: IO[int]) -> AsyncIterator[IOVal[int]]:
    count = await k.first()
    for i in range(count):
        yield IOVal("fx", i)
    raise ValueError(f"x_faulty gave up after {count} values")


@relay
async def _relay(fx: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for value in fx:
        yield IOVal("relayed", value)


# Backpressure: x_eager may run at most 5 values ahead of x_sluggish.
BACKLOG = 5
eager = Processor("x_eager", ["m"], ["items"], max_backlog=BACKLOG)
sluggish = Processor("x_sluggish", ["items"], ["seen"])


@eager
async def _eager(m: IO[int]) -> AsyncIterator[IOVal[tuple[int, float]]]:
    for i in range(await m.first()):
        yield IOVal("items", (i, time.time()))


@sluggish
async def _sluggish(items: IO[tuple[int, float]]) -> AsyncIterator[IOVal[tuple[int, float, float]]]:
    async for i, produced in items:
        yield IOVal("seen", (i, produced, time.time()))
        await anyio.sleep(0.01)


# Streams until cancelled or killed: says where it runs first.
ticker = Processor("x_ticker", ["period"], ["ticks", "where"])


@ticker
async def _ticker(period: IO[float]) -> AsyncIterator[IOVal[object]]:
    every = await period.first()
    yield IOVal("where", (os.getpid(), sniffio.current_async_library()))
    i = 0
    while True:
        yield IOVal("ticks", i)
        i += 1
        await anyio.sleep(every)


# CPU-bound: pure-Python work per value (the executors benchmark uses the same shape).
def spin(value: int, rounds: int) -> int:
    acc = value
    for j in range(rounds):
        acc = (acc * 31 + j) % 1_000_003
    return acc


crunch_a = Processor("x_crunch_a", ["work"], ["crunched_a", "pid_a"])
crunch_b = Processor("x_crunch_b", ["work"], ["crunched_b", "pid_b"])


@crunch_a
async def _crunch_a(work: IO[tuple[int, int]]) -> AsyncIterator[IOVal[int]]:
    n, rounds = await work.first()
    yield IOVal("pid_a", os.getpid())
    for i in range(n):
        yield IOVal("crunched_a", spin(i, rounds))


@crunch_b
async def _crunch_b(work: IO[tuple[int, int]]) -> AsyncIterator[IOVal[int]]:
    n, rounds = await work.first()
    yield IOVal("pid_b", os.getpid())
    for i in range(n):
        yield IOVal("crunched_b", spin(i, rounds))


ALL = (
    foobar, source, square, negate, pair, slow, total, faulty, relay, eager, sluggish, ticker,
    crunch_a, crunch_b,
)
