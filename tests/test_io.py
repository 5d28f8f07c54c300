"""IOBatch: a processor hands over many values at once; readers see them one by one."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from datagraph import IO, Flow, IOBatch, IOVal, Processor, Supervisor
from datagraph.exceptions import ProcessorFailed
from datagraph.store import keys

pytestmark = [pytest.mark.anyio, pytest.mark.stores]


async def _written(supervisor: Supervisor, run_id: str, io: str) -> int:
    runtime = await supervisor.runtime()
    return int(await runtime.client.custom_command(["HGET", keys.stats(run_id), f"written:{io}"]))


async def test_a_batch_reads_as_its_values_in_order_among_single_values(supervisor: Supervisor) -> None:
    mixed = Processor("iob_mixed", ["n"], ["xs", "ys"])
    double = Processor("iob_double", ["xs"], ["out"])

    @mixed
    async def _mixed(n: IO[int]) -> AsyncIterator[IOVal[int] | IOBatch[int]]:
        count = await n.first()
        yield IOVal("xs", -1)
        yield IOBatch("xs", list(range(count)))
        yield IOBatch("ys", range(3))
        yield IOBatch("xs", [])
        yield IOBatch("xs", (i for i in range(count, count + 5)))
        yield IOVal("xs", -2)

    @double
    async def _double(xs: IO[int]) -> AsyncIterator[IOBatch[int]]:
        async for values in xs.batches():
            yield IOBatch("out", [x * 2 for x in values])

    n = 2_500  # more than a writer's max_batch: the first batch spans several entries
    flow = Flow.from_processors(mixed, double).resolve()
    out = await supervisor.start_flow(flow, [IOVal("n", n)], all_outputs=True)
    expected = [-1, *range(n + 5), -2]
    assert await out["xs"].collect() == expected
    assert await out["ys"].collect() == [0, 1, 2]
    assert [v async for v in out["out"].stream()] == [2 * x for x in expected]
    run_id = out["xs"].run_id
    assert await supervisor.wait(run_id, timeout=30) == "succeeded"
    # The counters count values, not batches.
    assert await _written(supervisor, run_id, "xs") == n + 7
    assert await _written(supervisor, run_id, "ys") == 3
    assert await _written(supervisor, run_id, "out") == n + 7


async def test_a_batch_larger_than_the_backlog_waits_for_the_reader(supervisor: Supervisor) -> None:
    """max_backlog holds for a batch as for single values: the yield returns as the reader catches up."""
    backlog, n = 5, 60
    eager = Processor("iob_eager", ["n"], ["items", "done"], max_backlog=backlog)
    slow = Processor("iob_slow", ["items"], ["seen"])

    @eager
    async def _eager(n: IO[int]) -> AsyncIterator[IOVal[float] | IOBatch[int]]:
        yield IOBatch("items", range(await n.first()))
        yield IOVal("done", time.time())

    @slow
    async def _slow(items: IO[int]) -> AsyncIterator[IOVal[tuple[int, float]]]:
        async for i in items:
            yield IOVal("seen", (i, time.time()))
            await anyio.sleep(0.01)

    out = await supervisor.start_flow(Flow.from_processors(eager, slow).resolve(), [IOVal("n", n)])
    with anyio.fail_after(30):
        seen = await out["seen"].collect()
        (done_at,) = await out["done"].collect()
    assert [i for i, _ in seen] == list(range(n))
    consumed = dict(seen)
    # Unchecked, the batch would be written at once, before the reader took its 2nd value;
    # held back, its yield returns only once the reader is within the backlog (plus what is in flight).
    lead = 4 * backlog
    assert done_at >= consumed[n - 1 - lead], "the batch did not wait for its reader"


async def test_coroutines_and_sync_generators_hand_over_batches_too(supervisor: Supervisor) -> None:
    coro = Processor("iob_coro", ["n"], ["a"])
    gen = Processor("iob_sync_gen", ["a"], ["b"])

    @coro
    async def _coro(n: IO[int]) -> list[IOVal[int] | IOBatch[int]]:
        count = await n.first()
        return [IOBatch("a", range(count)), IOVal("a", count)]

    @gen
    def _gen(a: Any) -> Iterator[IOBatch[int]]:
        for xs in a.batches():  # a SyncIO reads batches too
            yield IOBatch("b", [x + 1 for x in xs])

    out = await supervisor.start_flow(Flow.from_processors(coro, gen).resolve(), [IOVal("n", 300)])
    assert await out["b"].collect() == list(range(1, 302))


@pytest.mark.parametrize(
    ("values", "named"),
    [("abc", "str"), (7, "int")],
)
async def test_a_batch_of_a_string_or_a_non_iterable_fails_naming_the_processor(
    supervisor: Supervisor, values: Any, named: str
) -> None:
    bad = Processor("iob_bad", ["n"], ["out"])

    @bad
    async def _bad(n: IO[int]) -> AsyncIterator[IOBatch[Any]]:
        await n.first()
        yield IOBatch("out", values)

    out = await supervisor.start_flow(Flow.from_processors(bad).resolve(), [IOVal("n", 1)])
    with pytest.raises(ProcessorFailed) as info:
        await out["out"].collect()
    assert info.value.processor == "iob_bad"
    assert info.value.error_type == "BadValueError"
    assert f"values of type {named}" in info.value.error_message
    assert "give a list" in info.value.error_message


async def test_a_batch_for_an_undeclared_output_fails_naming_the_outputs(supervisor: Supervisor) -> None:
    stray = Processor("iob_stray", ["n"], ["out"])

    @stray
    async def _stray(n: IO[int]) -> AsyncIterator[IOBatch[int]]:
        await n.first()
        yield IOBatch("elsewhere", [1, 2])

    out = await supervisor.start_flow(Flow.from_processors(stray).resolve(), [IOVal("n", 1)])
    with pytest.raises(ProcessorFailed) as info:
        await out["out"].collect()
    assert "'elsewhere'" in info.value.error_message
    assert "['out']" in info.value.error_message


class Token:
    """A value whose life a weak reference can follow."""


async def test_a_value_read_with_stream_is_held_by_its_reader_only(supervisor: Supervisor) -> None:
    """stream() lets go of each value as it hands it out, not with the rest of its batch."""
    tokens = Processor("iob_tokens", ["n"], ["out"])

    @tokens
    async def _tokens(n: IO[int]) -> AsyncIterator[IOBatch[Token]]:
        yield IOBatch("out", [Token() for _ in range(await n.first())])  # one entry

    out = await supervisor.start_flow(Flow.from_processors(tokens).resolve(), [IOVal("n", 3)])
    values = out["out"].stream()
    with anyio.fail_after(10):
        first = await values.__anext__()
        gone = weakref.ref(first)
        del first
        second = await values.__anext__()
    assert isinstance(second, Token)
    assert gone() is None, "the stream kept a value it had handed out"
    await values.aclose()
    assert await supervisor.wait(out["out"].run_id, timeout=30) == "succeeded"
