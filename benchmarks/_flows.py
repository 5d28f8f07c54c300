"""The processors and flows the scenarios run (all implemented in this process)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from datagraph import IO, Flow, IOBatch, IOVal, Processor

__all__ = [
    "BATCHED",
    "FANIN",
    "FANOUT",
    "FANOUT_ONE",
    "MEMORY",
    "PIPELINE",
    "RECORDS",
    "TICKS",
    "Progress",
    "make_record",
    "make_records",
    "progress",
]

# -- payloads ----------------------------------------------------------------

_PAD = "x" * 2048


def make_record(i: int) -> dict[str, Any]:
    """A 1 KiB dict (pickled, in a batch): the "realistic row" payload."""
    # Every string is a fresh object, so pickle's memo cannot shrink a batch.
    return {
        "id": i,
        "user": f"user-{i:06d}",
        "score": i * 0.5,
        "tags": ["alpha", "beta"],
        "text": f"{i:08d}" + _PAD[:982],
    }


def make_records(start: int, stop: int) -> list[dict[str, Any]]:
    return [make_record(i) for i in range(start, stop)]


# -- pipeline: source -> map(x*2) -> caller ------------------------------------

source = Processor("bench-source", inputs=["n"], outputs=["nums"])
double = Processor("bench-double", inputs=["nums"], outputs=["out"])


@source
async def _source(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("nums", i)


@double
async def _double(nums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in nums.stream():
        yield IOVal("out", x * 2)


PIPELINE = Flow.from_processors(source, double, name="bench-pipeline").resolve()

# -- the same, a batch per step: IOBatch out, IO.batches() in -------------------

batch_source = Processor("bench-batch-source", inputs=["n"], outputs=["nums"])
batch_double = Processor("bench-batch-double", inputs=["nums"], outputs=["out"])


@batch_source
async def _batch_source(n: IO[int]) -> AsyncIterator[IOBatch[int]]:
    total = await n.first()
    for start in range(0, total, 1000):
        yield IOBatch("nums", range(start, min(total, start + 1000)))


@batch_double
async def _batch_double(nums: IO[int]) -> AsyncIterator[IOBatch[int]]:
    async for xs in nums.batches():
        yield IOBatch("out", [x * 2 for x in xs])


BATCHED = Flow.from_processors(batch_source, batch_double, name="bench-batched").resolve()

# -- the same with 1 KiB dicts -------------------------------------------------

records = Processor("bench-records", inputs=["n"], outputs=["recs"])
rescore = Processor("bench-rescore", inputs=["recs"], outputs=["out"])


@records
async def _records(n: IO[int]) -> AsyncIterator[IOVal[dict[str, Any]]]:
    for i in range(await n.first()):
        yield IOVal("recs", make_record(i))


@rescore
async def _rescore(recs: IO[dict[str, Any]]) -> AsyncIterator[IOVal[dict[str, Any]]]:
    async for rec in recs.stream():
        yield IOVal("out", {**rec, "score": rec["score"] * 2})


RECORDS = Flow.from_processors(records, rescore, name="bench-records").resolve()

# -- fan-in: two sources zipped ------------------------------------------------

left = Processor("bench-left", inputs=["n"], outputs=["left"])
right = Processor("bench-right", inputs=["n"], outputs=["right"])
zipper = Processor("bench-zip", inputs=["left", "right"], outputs=["out"])


@left
async def _left(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("left", i)


@right
async def _right(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("right", -i)


@zipper
async def _zip(left: IO[int], right: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for a, b in left.stream_with(right):
        yield IOVal("out", a + b)


FANIN = Flow.from_processors(left, right, zipper, name="bench-fanin").resolve()

# -- fan-out: one source, three sinks -----------------------------------------


def _counter(index: int) -> Processor:
    output = f"seen{index}"
    spec = Processor(f"bench-count{index}", inputs=["nums"], outputs=[output])

    @spec
    async def _count(nums: IO[int]) -> AsyncIterator[IOVal[int]]:
        seen = 0
        async for _ in nums.stream():
            seen += 1
        yield IOVal(output, seen)

    return spec


_counters = [_counter(i) for i in (1, 2, 3)]
FANOUT = Flow.from_processors(source, *_counters, name="bench-fanout").resolve()
FANOUT_ONE = Flow.from_processors(source, _counters[0], name="bench-fanout-one").resolve()

# -- light load: one value every `pace` seconds, stamped when yielded ------------

ticker = Processor("bench-ticker", inputs=["n", "pace"], outputs=["ticks"])
forward = Processor("bench-forward", inputs=["ticks"], outputs=["out"])


@ticker
async def _ticker(n: IO[int], pace: IO[float]) -> AsyncIterator[IOVal[float]]:
    count, delay = await n.first(), await pace.first()
    for _ in range(count):
        await anyio.sleep(delay)
        yield IOVal("ticks", time.perf_counter())


@forward
async def _forward(ticks: IO[float]) -> AsyncIterator[IOVal[float]]:
    async for stamp in ticks.stream():
        yield IOVal("out", stamp)


TICKS = Flow.from_processors(ticker, forward, name="bench-ticks").resolve()

# -- a continuous flow ending in a slow-ish sink ---------------------------------


class Progress:
    """How far the sink of the memory flow has got (read by the sampler)."""

    def __init__(self) -> None:
        self.values = 0


progress = Progress()

slow_sink = Processor("bench-slow-sink", inputs=["out"], outputs=[])


@slow_sink
async def _slow_sink(out: IO[int]) -> None:
    # About 1 ms of "work" per 250 values: slower than the stages feeding it,
    # so their writers spend the run held back by backpressure.
    async for _ in out.stream():
        progress.values += 1
        if progress.values % 250 == 0:
            await anyio.sleep(0.001)


MEMORY = Flow.from_processors(source, double, slow_sink, name="bench-memory").resolve()
