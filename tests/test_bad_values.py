"""Values that cannot be sent fail their processor with a message naming it and the IO."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import ProcessorFailed

pytestmark = pytest.mark.anyio


async def _failure(supervisor: Supervisor, processor: Processor, output: str) -> ProcessorFailed:
    out = await supervisor.start_flow(Flow.from_processors(processor).resolve(), [IOVal("n", 3)])
    with anyio.fail_after(10), pytest.raises(ProcessorFailed) as info:
        await out[output].collect()
    assert await supervisor.wait(out[output].run_id, timeout=5) == "failed"
    return info.value


async def test_undeclared_output_is_named(supervisor: Supervisor) -> None:
    p = Processor("writes_elsewhere", ["n"], ["declared"])

    @p
    async def _p(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("declared", 1)
        yield IOVal("typo", await n.first())

    error = await _failure(supervisor, p, "declared")
    assert error.processor == "writes_elsewhere"
    assert "'typo'" in error.error_message and "does not declare" in error.error_message


async def test_unserialisable_value_names_processor_and_io(supervisor: Supervisor) -> None:
    p = Processor("yields_a_lock", ["n"], ["locks"])

    @p
    async def _p(n: IO[int]) -> AsyncIterator[IOVal[object]]:
        await n.first()
        yield IOVal("locks", threading.Lock())

    error = await _failure(supervisor, p, "locks")
    assert error.processor == "yields_a_lock"
    assert "'locks'" in error.error_message
    assert "lock" in error.error_message.lower()
    assert error.error_type == "BadValueError"


async def test_value_over_the_size_limit_is_refused(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, secret=b"s", max_entry_bytes=10_000)
    p = Processor("yields_too_much", ["n"], ["blobs"])

    @p
    async def _p(n: IO[int]) -> AsyncIterator[IOVal[bytes]]:
        await n.first()
        for _ in range(30):
            yield IOVal("blobs", b"ok" * 1000)  # many small values: split over entries
        yield IOVal("blobs", b"x" * 50_000)

    try:
        out = await supervisor.start_flow(Flow.from_processors(p).resolve(), [IOVal("n", 1)])
        got: list[bytes] = []
        with anyio.fail_after(10), pytest.raises(ProcessorFailed) as info:
            async for blob in out["blobs"]:
                got.append(blob)
        assert "max_entry_bytes=10000" in info.value.error_message
        assert "'blobs'" in info.value.error_message
        # The values before the oversized one were delivered.
        assert len(got) == 30
    finally:
        await Supervisor.adetach()


async def test_yielding_something_else_than_an_ioval_is_explained(supervisor: Supervisor) -> None:
    p = Processor("yields_raw", ["n"], ["xs"])

    @p
    async def _p(n: IO[int]) -> AsyncIterator[int]:
        yield await n.first()

    error = await _failure(supervisor, p, "xs")
    assert "yield IOVal(name=<output>, value=...)" in error.error_message
