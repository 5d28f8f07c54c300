"""End-to-end runs on the LocalExecutor: the scenarios every executor must pass."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
import pytest

from datagraph import IO, Depends, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import ProcessorFailed

pytestmark = [pytest.mark.anyio, pytest.mark.stores]


async def test_processor_with_two_outputs(supervisor: Supervisor) -> None:
    split = Processor("split", ["n"], ["even", "odd"])

    @split
    async def _split(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("even" if i % 2 == 0 else "odd", i)

    out = await supervisor.start_flow(Flow.from_processors(split).resolve(), [IOVal("n", 10)])
    assert await out["even"].collect() == [0, 2, 4, 6, 8]
    assert await out["odd"].collect() == [1, 3, 5, 7, 9]


async def test_zip_two_streams(supervisor: Supervisor) -> None:
    nums = Processor("nums", ["n"], ["a", "b"])
    pair = Processor("pair", ["a", "b"], ["sum"])

    @nums
    async def _nums(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("a", i)
            yield IOVal("b", 100 * i)

    @pair
    async def _pair(a: IO[int], b: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for x, y in a.stream_with(b):
            yield IOVal("sum", x + y)

    out = await supervisor.start_flow(Flow.from_processors(nums, pair).resolve(), [IOVal("n", 5)])
    assert await out["sum"].collect() == [0, 101, 202, 303, 404]


async def test_three_processor_fan_in(supervisor: Supervisor) -> None:
    left = Processor("left", ["n"], ["l"])
    right = Processor("right", ["n"], ["r"])
    join = Processor("join", ["l", "r"], ["both"])

    @left
    async def _left(n: IO[int]) -> AsyncIterator[IOVal[str]]:
        for i in range(await n.first()):
            yield IOVal("l", f"l{i}")

    @right
    async def _right(n: IO[int]) -> AsyncIterator[IOVal[str]]:
        for i in range(await n.first()):
            yield IOVal("r", f"r{i}")

    @join
    async def _join(l: IO[str], r: IO[str]) -> AsyncIterator[IOVal[str]]:  # noqa: E741
        async for item in l.as_available(r):
            yield IOVal("both", item.value)

    out = await supervisor.start_flow(Flow.from_processors(left, right, join).resolve(), [IOVal("n", 50)])
    got = await out["both"].collect()
    assert sorted(got) == sorted([f"l{i}" for i in range(50)] + [f"r{i}" for i in range(50)])
    assert [v for v in got if v[0] == "l"] == [f"l{i}" for i in range(50)]


async def test_consumer_interleaves_with_producer(supervisor: Supervisor) -> None:
    """The consumer handles item i before the producer emits item i+1."""
    events: list[tuple[str, int]] = []
    handled: dict[int, anyio.Event] = {}
    prod = Processor("prod", ["n"], ["items"])
    cons = Processor("cons", ["items"], ["done"])

    @prod
    async def _prod(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            handled[i] = anyio.Event()
            events.append(("produce", i))
            yield IOVal("items", i)
            with anyio.fail_after(10):
                await handled[i].wait()

    @cons
    async def _cons(items: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for i in items.stream():
            events.append(("consume", i))
            handled[i].set()
            yield IOVal("done", i)

    out = await supervisor.start_flow(Flow.from_processors(prod, cons).resolve(), [IOVal("n", 5)])
    assert await out["done"].collect() == [0, 1, 2, 3, 4]
    expected = [(kind, i) for i in range(5) for kind in ("produce", "consume")]
    assert events == expected


async def test_wait_processor_starts_after_its_input_completes(supervisor: Supervisor) -> None:
    produced_done: list[float] = []
    started: list[float] = []
    slow = Processor("slow", ["n"], ["xs"])
    total = Processor("total", ["xs"], ["sum"], wait=True)

    @slow
    async def _slow(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            await anyio.sleep(0.02)
            yield IOVal("xs", i)
        produced_done.append(time.monotonic())

    @total
    async def _total(xs: IO[int]) -> AsyncIterator[IOVal[int]]:
        started.append(time.monotonic())
        yield IOVal("sum", sum(await xs.collect()))

    flow = Flow.from_processors(slow, total).resolve()
    assert flow.topology.partitions == {"slow": 0, "total": 1}
    out = await supervisor.start_flow(flow, [IOVal("n", 10)])
    assert await out["sum"].first() == 45
    assert started[0] >= produced_done[0]


async def test_start_flow_returns_before_processors_finish(supervisor: Supervisor) -> None:
    gate = anyio.Event()
    p = Processor("gated", ["n"], ["out"])

    @p
    async def _gated(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("out", await n.first())
        await gate.wait()
        yield IOVal("out", 2)

    with anyio.fail_after(5):
        out = await supervisor.start_flow(Flow.from_processors(p).resolve(), [IOVal("n", 1)])
        stream = out["out"].stream()
        assert await stream.__anext__() == 1
        gate.set()
        assert await stream.__anext__() == 2
        await stream.aclose()


async def test_dependencies_resolve_and_clean_up(supervisor: Supervisor) -> None:
    log: list[str] = []

    def base() -> int:
        return 3

    def scaled(b: Annotated[int, Depends(base)]) -> int:
        return b * 10

    async def resource() -> AsyncIterator[str]:
        log.append("open")
        yield "res"
        log.append("close")

    def sync_resource() -> Iterator[str]:
        log.append("sync-open")
        yield "sres"
        log.append("sync-close")

    p = Processor("di", ["n"], ["out"])

    @p
    async def _di(
        n: IO[int],
        s: Annotated[int, Depends(scaled)],
        r: Annotated[str, Depends(resource)],
        sr: str = Depends(sync_resource),
    ) -> AsyncIterator[IOVal[Any]]:
        log.append("run")
        yield IOVal("out", (await n.first(), s, r, sr))

    out = await supervisor.start_flow(Flow.from_processors(p).resolve(), [IOVal("n", 1)])
    assert await out["out"].collect() == [(1, 30, "res", "sres")]
    assert await supervisor.wait(out["out"].run_id, timeout=5) == "succeeded"
    assert log[0] in {"open", "sync-open"}
    assert log.index("run") < log.index("close")
    assert log.index("run") < log.index("sync-close")


async def test_sync_function_and_sync_generator_run_in_threads(supervisor: Supervisor) -> None:
    import threading

    main = threading.get_ident()
    threads: list[int] = []
    gen = Processor("sync_gen", ["n"], ["xs"])
    fn = Processor("sync_fn", ["xs"], ["total"])

    @gen
    def _gen(n: Any) -> Iterator[IOVal[int]]:
        threads.append(threading.get_ident())
        for i in range(n.first()):
            yield IOVal("xs", i)

    @fn
    def _fn(xs: Any) -> IOVal[int]:
        threads.append(threading.get_ident())
        return IOVal("total", sum(xs.stream()))

    out = await supervisor.start_flow(Flow.from_processors(gen, fn).resolve(), [IOVal("n", 1000)])
    assert await out["total"].collect() == [sum(range(1000))]
    assert len(threads) == 2 and main not in threads


async def test_coroutine_processor_returns_values(supervisor: Supervisor) -> None:
    p = Processor("coro", ["n"], ["a", "b"])

    @p
    async def _coro(n: IO[int]) -> list[IOVal[int]]:
        v = await n.first()
        return [IOVal("a", v), IOVal("b", -v)]

    out = await supervisor.start_flow(Flow.from_processors(p).resolve(), [IOVal("n", 7)])
    assert await out["a"].collect() == [7]
    assert await out["b"].collect() == [-7]


async def test_streams_are_rereadable(supervisor: Supervisor) -> None:
    p = Processor("many", ["n"], ["xs"])

    @p
    async def _many(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("xs", i)

    out = await supervisor.start_flow(Flow.from_processors(p).resolve(), [IOVal("n", 3000)])
    first = await out["xs"].collect()
    second = [v async for v in out["xs"].stream()]
    assert first == second == list(range(3000))
    assert await out["xs"].first() == 0


async def test_all_outputs_returns_intermediate_streams(supervisor: Supervisor) -> None:
    a = Processor("a1", ["n"], ["mid"])
    b = Processor("b1", ["mid"], ["end"])

    @a
    async def _a(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("mid", await n.first() + 1)

    @b
    async def _b(mid: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("end", await mid.first() * 2)

    flow = Flow.from_processors(a, b).resolve()
    out = await supervisor.start_flow(flow, [IOVal("n", 1)])
    assert set(out) == {"end"}
    out = await supervisor.start_flow(flow, [IOVal("n", 1)], all_outputs=True)
    assert set(out) == {"mid", "end"}
    assert await out["mid"].collect() == [2]
    assert await out["end"].collect() == [4]


async def test_many_values_in_order(supervisor: Supervisor) -> None:
    src = Processor("src", ["n"], ["x"])
    dbl = Processor("dbl", ["x"], ["y"])

    @src
    async def _src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("x", i)

    @dbl
    async def _dbl(x: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for v in x:
            yield IOVal("y", v * 2)

    out = await supervisor.start_flow(Flow.from_processors(src, dbl).resolve(), [IOVal("n", 50_000)])
    assert await out["y"].collect() == [2 * i for i in range(50_000)]
    assert await supervisor.wait(out["y"].run_id, timeout=10) == "succeeded"


async def test_failure_propagates_with_processor_name(supervisor: Supervisor) -> None:
    src = Processor("boom_src", ["n"], ["x"])
    mid = Processor("boom_mid", ["x"], ["y"])

    @src
    async def _src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            if i == 20:
                raise RuntimeError("disk on fire")
            yield IOVal("x", i)

    @mid
    async def _mid(x: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for v in x:
            yield IOVal("y", v)

    out = await supervisor.start_flow(Flow.from_processors(src, mid).resolve(), [IOVal("n", 100)])
    seen: list[int] = []
    with anyio.fail_after(5), pytest.raises(ProcessorFailed) as info:
        async for v in out["y"].stream():
            seen.append(v)
    assert info.value.processor == "boom_src"
    assert "disk on fire" in str(info.value)
    assert info.value.error_type == "RuntimeError"
    assert "raise RuntimeError" in info.value.traceback
    # Nothing yielded before the failure is lost.
    assert seen == list(range(20))
    assert await supervisor.wait(out["y"].run_id, timeout=5) == "failed"


async def test_a_failure_stops_the_other_processors_of_the_run(supervisor: Supervisor) -> None:
    stopped = anyio.Event()
    fails = Processor("fails_soon", ["n"], ["nothing"])
    endless = Processor("keeps_going", ["n"], ["ticks"])

    @fails
    async def _fails(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        await n.first()
        await anyio.sleep(0.2)
        raise KeyError("missing row")
        yield IOVal("nothing", 0)  # pragma: no cover

    @endless
    async def _endless(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        i = await n.first()
        try:
            while True:
                i += 1
                yield IOVal("ticks", i)
                await anyio.sleep(0.001)
        finally:
            stopped.set()

    out = await supervisor.start_flow(Flow.from_processors(fails, endless).resolve(), [IOVal("n", 0)])
    with anyio.fail_after(10), pytest.raises(ProcessorFailed) as info:
        async for _ in out["ticks"]:
            pass
    assert info.value.processor == "fails_soon"
    assert "missing row" in str(info.value)
    with anyio.fail_after(5):
        await stopped.wait()


async def test_every_reader_downstream_of_a_failure_passes_on_what_came_before_it(
    supervisor: Supervisor,
) -> None:
    # Two readers of the failing processor's output: the fast one meets the failure
    # first, and must not stop the slow one before it has passed on every value.
    src = Processor("fan_boom_src", ["n"], ["fx"])
    fast = Processor("fan_boom_fast", ["fx"], ["quick"])
    slow = Processor("fan_boom_slow", ["fx"], ["late"])

    @src
    async def _src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("fx", i)
        raise RuntimeError("source gave out")

    @fast
    async def _fast(fx: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for v in fx:
            yield IOVal("quick", v)

    @slow
    async def _slow(fx: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for v in fx:
            await anyio.sleep(0.01)
            yield IOVal("late", v)

    flow = Flow.from_processors(src, fast, slow).resolve()
    out = await supervisor.start_flow(flow, [IOVal("n", 50)])
    for io in ("quick", "late"):
        seen: list[int] = []
        with anyio.fail_after(10), pytest.raises(ProcessorFailed, match="source gave out") as info:
            async for v in out[io].stream():
                seen.append(v)
        assert info.value.processor == "fan_boom_src"
        assert seen == list(range(50)), io
