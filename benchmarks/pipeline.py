"""pipeline: source -> map(x*2) -> caller, against the raw glide relay.

The processors yield one ``IOVal`` per value and read with ``stream()``, as
the README's do; a last row runs the same flow written a batch per step
(``IOBatch`` out, ``IO.batches()`` in), with the same caller, and another
runs the two processors' own code with no engine under it (the most a flow
of one ``IOVal`` per value could reach on this interpreter).

The sink is the caller itself: ``async for v in outputs["out"].stream()``,
the way the README reads a flow.  The clock runs from ``start_flow`` to the
last value read.  Each repeat measures the relay and the flow back to back,
so both see the same machine load, and rounds alternate asyncio and Trio.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from typing import Any

from datagraph import Flow, IOVal

from ._flows import BATCHED, PIPELINE, RECORDS, make_records
from ._harness import BACKENDS, FIGURES_NOTE, Bench, Session, fmt_rate, median
from .relay import relay_throughput

NAME = "pipeline"
WARMUP = 2_000


def ints(start: int, stop: int) -> list[int]:
    return list(range(start, stop))


async def flow_rate(session: Session, flow: Flow, n: int) -> float:
    """values/s of one run of ``flow`` given ``n`` (start_flow to last value read)."""
    gc.collect()  # both sides start with the collector in the same state (see relay_rate)
    elapsed, read = await session.timed_run(flow, [IOVal("n", n)])
    if read != n:
        raise RuntimeError(f"{flow.name} delivered {read} values, expected {n}")
    return n / elapsed


async def relay_rate(session: Session, n: int, make: Any = ints) -> float:
    # A full collection walks the whole heap (40-90 ms on the 2-core VM): one landing
    # in a short run of either side, or not, moved a quick run's ratio by 10-20%.
    # Collecting before each run starts both with nothing due.
    gc.collect()
    return n / await relay_throughput(session.bench.store.port, n, make)


class _Values:
    """The least a ``stream()`` can do: hand out a list's values, one async step each."""

    def __init__(self, values: list[Any]) -> None:
        self._next = iter(values).__next__

    def __aiter__(self) -> _Values:
        return self

    async def __anext__(self) -> Any:
        try:
            return self._next()
        except StopIteration:
            raise StopAsyncIteration from None


class _Input:
    """An input of the processors below, with nothing under it."""

    def __init__(self, values: list[Any]) -> None:
        self._values = values

    async def first(self) -> Any:
        return self._values[0]

    def stream(self) -> _Values:
        return _Values(self._values)


# The pipeline's two processors, line for line (benchmarks/_flows.py), undecorated.
async def _bare_source(n: _Input) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("nums", i)


async def _bare_double(nums: _Input) -> AsyncIterator[IOVal[int]]:
    async for x in nums.stream():
        yield IOVal("out", x * 2)


async def floor_rate(n: int) -> float:
    """values/s of the ints pipeline's own code with no engine under it (a ceiling for the flow).

    Each processor runs to its end in turn, its values kept in a list (the
    cheapest hand-over there is), and the caller reads the last one through
    the same minimal ``stream()``: every step the flow's user code takes per
    value, and nothing else.
    """
    gc.collect()
    started = time.perf_counter()
    nums = [v.value async for v in _bare_source(_Input([n]))]
    out = [v.value async for v in _bare_double(_Input(nums))]
    read = 0
    async for _ in _Values(out):
        read += 1
    elapsed = time.perf_counter() - started
    if read != n:
        raise RuntimeError(f"the engine-free pipeline delivered {read} values, expected {n}")
    return n / elapsed


async def warm_up(session: Session) -> None:
    """Open this loop's connections and touch every code path once (untimed)."""
    await flow_rate(session, PIPELINE, WARMUP)
    await relay_rate(session, WARMUP)


def run(bench: Bench) -> dict[str, Any]:
    n_ints = bench.pick(100_000, 300_000)
    n_recs = bench.pick(20_000, 60_000)
    repeats = bench.pick(3, 5)
    bench.title(
        NAME,
        f'source -> map(x*2) -> caller reading outputs["out"].stream(); LocalExecutor; best of {repeats}',
    )
    bench.say("  baseline: raw valkey-glide relay (writer -> relay -> reader), 1,000 values per entry")
    bench.say(f"  {FIGURES_NOTE}")

    async def one_round(session: Session) -> dict[str, float]:
        await warm_up(session)
        await flow_rate(session, RECORDS, WARMUP)
        await flow_rate(session, BATCHED, WARMUP)
        return {
            "relay_ints": await relay_rate(session, n_ints),
            "ints": await flow_rate(session, PIPELINE, n_ints),
            "ints_batched": await flow_rate(session, BATCHED, n_ints),
            "ints_floor": await floor_rate(n_ints),
            "relay_records": await relay_rate(session, n_recs, make_records),
            "records": await flow_rate(session, RECORDS, n_recs),
        }

    # Rounds alternate the backends, and every ratio is the median of per-round
    # ratios, so a load change on a shared machine hits both sides of a ratio.
    rounds: dict[str, list[dict[str, float]]] = {backend: [] for backend in BACKENDS}
    for _ in range(repeats):
        for backend in BACKENDS:
            rounds[backend].append(bench.session(backend, one_round))

    def ratio(top: list[dict[str, float]], bottom: list[dict[str, float]], a: str, b: str) -> float:
        return median(t[a] / u[b] for t, u in zip(top, bottom, strict=True))

    figures: dict[str, Any] = {"n_ints": n_ints, "n_records": n_recs, "repeats": repeats}
    for backend in BACKENDS:
        runs = rounds[backend]
        got = {key: max(r[key] for r in runs) for key in runs[0]}
        got["ints_vs_relay"] = ratio(runs, runs, "ints", "relay_ints")
        got["ints_batched_vs_relay"] = ratio(runs, runs, "ints_batched", "relay_ints")
        got["ints_floor_vs_relay"] = ratio(runs, runs, "ints_floor", "relay_ints")
        got["records_vs_relay"] = ratio(runs, runs, "records", "relay_records")
        figures[backend] = got
        bench.row(f"relay, ints, {backend}", fmt_rate(got["relay_ints"]), "baseline", f"N={n_ints:,}")
        bench.row(f"flow, ints, {backend}", fmt_rate(got["ints"]), f"{got['ints_vs_relay']:.3f}x relay")
        bench.row(
            f"flow, ints, IOBatch, {backend}",
            fmt_rate(got["ints_batched"]),
            f"{got['ints_batched_vs_relay']:.3f}x relay",
        )
        bench.row(
            f"ints, the processors' code alone, {backend}",
            fmt_rate(got["ints_floor"]),
            f"{got['ints_floor_vs_relay']:.3f}x relay",
            "no engine: the most one IOVal per value can reach",
        )
        bench.row(
            f"relay, 1 KiB dicts, {backend}", fmt_rate(got["relay_records"]), "baseline", f"N={n_recs:,}"
        )
        bench.row(
            f"flow, 1 KiB dicts, {backend}", fmt_rate(got["records"]), f"{got['records_vs_relay']:.3f}x relay"
        )
    figures["trio_vs_asyncio_ints"] = ratio(rounds["trio"], rounds["asyncio"], "ints", "ints")
    figures["trio_vs_asyncio_records"] = ratio(rounds["trio"], rounds["asyncio"], "records", "records")
    bench.row("trio / asyncio, ints", f"{figures['trio_vs_asyncio_ints']:.3f}x")
    bench.row("trio / asyncio, 1 KiB dicts", f"{figures['trio_vs_asyncio_records']:.3f}x")
    bench.record(NAME, **figures)
    return figures
