"""A stream with entries missing: trimmed ones are skipped, lost ones fail the reader clearly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import StoreError
from datagraph.store import gaps, keys

pytestmark = [pytest.mark.anyio, pytest.mark.stores]

gap_src = Processor("gap_src", ["gap_n"], ["gap_xs"])
resume = {"event": None}


@gap_src
async def _gap_src(gap_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    await gap_n.first()
    for i in range(3):
        yield IOVal("gap_xs", i)
        await anyio.sleep(0.05)  # the writer flushes while the processor waits: one entry each
    event = resume["event"]
    assert isinstance(event, anyio.Event)
    await event.wait()
    yield IOVal("gap_xs", 3)


async def _three_entries_written(supervisor: Supervisor) -> tuple[str, str, anyio.Event]:
    resume["event"] = event = anyio.Event()
    out = await supervisor.start_flow(Flow.from_processors(gap_src).resolve(), [IOVal("gap_n", 1)])
    run_id = out["gap_xs"].run_id
    key = keys.stream(run_id, "gap_xs")
    client = (await supervisor.runtime()).client
    for _ in range(500):  # a poll with a deadline: 10 s
        if await client.custom_command(["XLEN", key]) >= 3:
            return run_id, key, event
        await anyio.sleep(0.02)
    raise AssertionError(f"the writer did not write 3 entries to {key}")


async def test_entries_the_store_lost_fail_the_reader_by_name(supervisor: Supervisor) -> None:
    run_id, key, event = await _three_entries_written(supervisor)
    client = (await supervisor.runtime()).client
    # What a failover can leave behind: the new primary never got entries 0-2 and 0-3.
    first = await client.custom_command(["XRANGE", key, "0-1", "0-1"])
    (fields,) = first.values()
    await client.custom_command(["DEL", key])
    await client.custom_command(["XADD", key, "0-1", *fields[0]])
    event.set()
    reader = _io(supervisor, run_id)
    with pytest.raises(StoreError, match=r"'gap_xs' of run \w+ lost entries before 0-4: the store dropped"):
        await reader.collect()


async def test_trimmed_entries_are_skipped(supervisor: Supervisor) -> None:
    run_id, key, event = await _three_entries_written(supervisor)
    client = (await supervisor.runtime()).client
    await client.custom_command(["XTRIM", key, "MINID", "0-3"])
    event.set()
    reader = _io(supervisor, run_id)
    assert await reader.collect() == [2, 3]


def _io(supervisor: Supervisor, run_id: str) -> IO[int]:
    """A reader of the run's stream from its first entry, like the caller's own."""
    return IO(supervisor, run_id, "gap_xs")


def test_skipped_compares_writer_sequence_numbers() -> None:
    assert gaps.skipped("0-1", "0-3")
    assert not gaps.skipped("0-1", "0-2")
    assert gaps.skipped("0-0", "0-2")
    assert not gaps.skipped("0-4", "1764500000000-0")  # a time-based id: a cancel marker
