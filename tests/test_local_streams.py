"""In-flow streams handed from a writer to readers waiting in the same runtime (datagraph.local_streams)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import ProcessorFailed, RunCancelled
from datagraph.executors import LocalExecutor
from datagraph.local_streams import LocalStreams
from datagraph.store import keys
from tests.test_hand_over import _calls, _hash

pytestmark = pytest.mark.anyio

DEADLINE = 10.0

_source = Processor("ls_source", ["ls_n"], ["ls_nums"])
_double = Processor("ls_double", ["ls_nums"], ["ls_out"])
_failing = Processor("ls_failing", ["ls_fn"], ["ls_fnums"])
_relay = Processor("ls_relay", ["ls_fnums"], ["ls_fout"])
_stuck = Processor("ls_stuck", ["ls_sn"], ["ls_sout"])
_partial = Processor("ls_partial", ["ls_pn"], ["ls_pout"])
_gated = Processor("ls_gated", ["ls_gn"], ["ls_gout"])
#: Opens the gated processor's way to its value (set by the test that runs it).
_GATE: list[anyio.Event] = []


@_source
async def _count(ls_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await ls_n.first()):
        yield IOVal("ls_nums", i + 1)


@_double
async def _twice(ls_nums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in ls_nums:
        yield IOVal("ls_out", x * 2)


@_failing
async def _fail_after(ls_fn: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await ls_fn.first()):
        yield IOVal("ls_fnums", i)
    raise ValueError("no more numbers")


@_relay
async def _pass_on(ls_fnums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in ls_fnums:
        yield IOVal("ls_fout", x)


@_stuck
async def _never(ls_sn: IO[int]) -> AsyncIterator[IOVal[int]]:
    await ls_sn.first()
    await anyio.sleep_forever()
    yield IOVal("ls_sout", 0)  # pragma: no cover


@_partial
async def _some_then_wait(ls_pn: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await ls_pn.first()):
        yield IOVal("ls_pout", i)
    await anyio.sleep_forever()


@_gated
async def _when_let(ls_gn: IO[int]) -> AsyncIterator[IOVal[int]]:
    n = await ls_gn.first()
    await _GATE[-1].wait()
    yield IOVal("ls_gout", n * 2)


TWO_STAGES = Flow.from_processors(_source, _double).resolve()
GATED = Flow.from_processors(_gated).resolve()
FAILING = Flow.from_processors(_failing, _relay).resolve()
STUCK = Flow.from_processors(_stuck).resolve()
PARTIAL = Flow.from_processors(_partial).resolve()


def _attach(valkey_url: str, **settings: Any) -> Supervisor:
    return Supervisor.attach(
        redis_config={"url": valkey_url},
        executor=LocalExecutor(),
        secret=b"test-secret",
        heartbeat_interval=600.0,
        **settings,
    )


async def _xreads(supervisor: Supervisor) -> int:
    return await _calls(supervisor, "xread")


async def _run(
    supervisor: Supervisor, valkey_url: str, n: int
) -> tuple[list[int], dict[str, str], dict[str, str], int, int]:
    """Output, read positions, read/written counters, XREADs and entries handed over of one run."""
    runtime = await supervisor.runtime()
    warm = await supervisor.start_flow(TWO_STAGES, [IOVal("ls_n", 1)])  # opens the readers' clients
    assert await warm["ls_out"].collect() == [2]
    before, handed = await _xreads(supervisor), runtime.local.handed
    out = await supervisor.start_flow(TWO_STAGES, [IOVal("ls_n", n)])
    got = await out["ls_out"].collect()
    run_id = out["ls_out"].run_id
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"
    xreads, handed = await _xreads(supervisor) - before, runtime.local.handed - handed
    await Supervisor.adetach()  # publishes the caller's parked position
    supervisor = _attach(valkey_url)
    stats = await _hash(supervisor, keys.stats(run_id))
    counters = {k: v for k, v in stats.items() if k.startswith(("read:", "written:"))}
    positions = await _hash(supervisor, keys.pos(run_id))
    positions.pop("ended", None)  # when the run's readers were done: a time, not a position
    await Supervisor.adetach()
    return got, positions, counters, xreads, handed


async def test_a_local_run_reads_nothing_back_and_counts_as_if_read(valkey_url: str) -> None:
    """Handed over in-process: no XREAD, and the same values, positions and counters as when read."""
    Supervisor.detach()
    results = {}
    for local in (True, False):
        results[local] = await _run(_attach(valkey_url, hand_over_local=local), valkey_url, 3)
    on, off = results[True], results[False]
    assert on[0] == off[0] == [2, 4, 6]
    assert on[1] == off[1]  # every read position, entry id and "read to the end" mark
    assert on[1][keys.pos_field("ls_double", "ls_nums")] == "3"
    assert on[2] == off[2]
    assert on[2]["written:ls_nums"] == on[2]["written:ls_out"] == "3"
    # Off: the double's input and the caller's output are read from the store.
    assert (on[3], off[3]) == (0, 2)
    assert on[4] >= 4 and off[4] == 0  # value and end of two streams


async def test_a_reader_behind_its_local_writer_reads_the_store_at_once(valkey_url: str) -> None:
    """A caller that starts reading after its writer has flushed does not wait for the next flush."""
    Supervisor.detach()
    supervisor = _attach(valkey_url)
    try:
        runtime = await supervisor.runtime()
        out = await supervisor.start_flow(PARTIAL, [IOVal("ls_pn", 3)])
        key = keys.stream(out["ls_pout"].run_id, "ls_pout")
        with anyio.fail_after(DEADLINE):
            # The processor waits after its values: its flusher sends them.
            while runtime.local.written(key) < 1:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        waits, before = runtime.local.waits, await _xreads(supervisor)
        got = []
        with anyio.fail_after(DEADLINE):
            async for x in out["ls_pout"].stream():
                got.append(x)
                if len(got) == 3:
                    break
        assert got == [0, 1, 2]
        # Read from the store at once: it was behind what its writer had written.
        assert (runtime.local.waits - waits, await _xreads(supervisor) - before) == (0, 1)
        await supervisor.cancel(out["ls_pout"].run_id)
        assert await supervisor.wait(out["ls_pout"].run_id, timeout=DEADLINE) == "cancelled"
    finally:
        await Supervisor.adetach()


async def test_a_long_stream_through_local_readers_keeps_its_backlog(valkey_url: str) -> None:
    """Positions still reach the writer: a small backlog neither stalls nor is overrun."""
    Supervisor.detach()
    supervisor = _attach(valkey_url, max_backlog=50, max_batch=10)
    try:
        n = 3000
        out = await supervisor.start_flow(TWO_STAGES, [IOVal("ls_n", n)])
        with anyio.fail_after(DEADLINE * 3):
            got = await out["ls_out"].collect()
        assert got == [2 * (i + 1) for i in range(n)]
        assert await supervisor.wait(out["ls_out"].run_id, timeout=DEADLINE) == "succeeded"
    finally:
        await Supervisor.adetach()


async def test_a_failure_reaches_a_local_reader_after_the_values_before_it(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = _attach(valkey_url)
    try:
        out = await supervisor.start_flow(FAILING, [IOVal("ls_fn", 3)])
        got: list[int] = []
        with anyio.fail_after(DEADLINE), pytest.raises(ProcessorFailed, match="no more numbers") as info:
            async for x in out["ls_fout"].stream():
                got.append(x)
        assert info.value.processor == "ls_failing"
        assert got == [0, 1, 2]
    finally:
        await Supervisor.adetach()


async def test_cancel_ends_a_reader_waiting_for_a_local_writer(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = _attach(valkey_url)
    try:
        out = await supervisor.start_flow(STUCK, [IOVal("ls_sn", 1)])
        runtime = await supervisor.runtime()

        async def cancel_when_waiting() -> None:
            with anyio.fail_after(DEADLINE):
                # The reader's wait has no event of its own to await: poll for it.
                while not runtime.local.any_waiting():  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            assert await supervisor.cancel(out["ls_sout"].run_id)

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_waiting)
                with pytest.raises(RunCancelled):
                    await out["ls_sout"].collect()
    finally:
        await Supervisor.adetach()


async def _raw(valkey_url: str, *command: str) -> bytes:
    """One command on a connection of its own (not queued behind a client the store holds)."""
    host, port = valkey_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    request = f"*{len(command)}\r\n" + "".join(f"${len(part)}\r\n{part}\r\n" for part in command)
    async with await anyio.connect_tcp(host, int(port)) as connection:
        await connection.send(request.encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += await connection.receive()
    return reply.strip()


@asynccontextmanager
async def _writes_held(valkey_url: str) -> AsyncIterator[None]:
    """The store holds every write back (``CLIENT PAUSE WRITE``) until the block ends."""
    assert await _raw(valkey_url, "CLIENT", "PAUSE", "5000", "WRITE") == b"+OK"
    try:
        yield
    finally:
        assert await _raw(valkey_url, "CLIENT", "UNPAUSE") == b"+OK"


async def test_a_local_reader_has_a_value_as_its_write_goes_out_and_the_end_once_it_is_in(
    valkey_url: str,
) -> None:
    """With the store holding writes back, the caller has the value, not yet the stream's end."""
    Supervisor.detach()
    supervisor = _attach(valkey_url)
    _GATE.append(anyio.Event())
    got: list[int] = []
    first, ended = anyio.Event(), anyio.Event()

    async def read(stream: AsyncIterator[int]) -> None:
        async for value in stream:
            got.append(value)
            first.set()
        ended.set()

    try:
        out = await supervisor.start_flow(GATED, [IOVal("ls_gn", 21)])
        key = keys.stream(out["ls_gout"].run_id, "ls_gout")
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, out["ls_gout"].stream())
                runtime = await supervisor.runtime()
                # The reader waits for its local writer (for up to LOCAL_WAIT, 0.25 s): poll for it.
                while not runtime.local.any_waiting():  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                async with _writes_held(valkey_url):
                    _GATE[-1].set()
                    await first.wait()
                    assert got == [42]
                    assert await _raw(valkey_url, "XLEN", key) == b":0"  # not in the store yet
                    await anyio.sleep(0.3)
                    assert not ended.is_set()  # the end waits for the store
                await ended.wait()
        assert got == [42]
        assert await _raw(valkey_url, "XLEN", key) == b":2"  # the value's entry and the end marker
        assert await supervisor.wait(out["ls_gout"].run_id, timeout=DEADLINE) == "succeeded"
    finally:
        await Supervisor.adetach()


async def test_a_start_cancelled_while_its_record_is_on_its_way_ends_the_run(valkey_url: str) -> None:
    """The record may be in the store: the run is ended there, not left "running"."""
    Supervisor.detach()
    supervisor = _attach(valkey_url)
    try:
        warm = await supervisor.start_flow(TWO_STAGES, [IOVal("ls_n", 1)])  # opens the clients
        assert await warm["ls_out"].collect() == [2]
        run_id = uuid.uuid4().hex
        async with _writes_held(valkey_url):
            with anyio.move_on_after(0.3) as scope:  # the record's pipeline is held by the store
                await supervisor.start_flow(TWO_STAGES, [IOVal("ls_n", 1)], run_id=run_id)
            assert scope.cancelled_caught
        assert await supervisor.wait(run_id, timeout=DEADLINE) == "cancelled"
    finally:
        await Supervisor.adetach()


class _Waiting:
    """A reader of LocalStreams that records what reaches it."""

    def __init__(self) -> None:
        self.took: list[tuple[str, Sequence[tuple[int, bytes, bytes]]]] = []
        self.woken = 0

    def take_local(self, key: str, entries: Sequence[tuple[int, bytes, bytes]]) -> None:
        self.took.append((key, entries))

    def wake(self) -> None:
        self.woken += 1


def test_local_streams_hand_over_to_waiting_readers_and_wake_them_when_writers_end() -> None:
    local = LocalStreams()
    a, b = _Waiting(), _Waiting()
    assert not local.all_local(["s1"])
    local.expect(["run:{r1}:io:x", "run:{r1}:io:y"])
    assert local.all_local(["run:{r1}:io:x", "run:{r1}:io:y"])
    assert not local.all_local(["run:{r1}:io:x", "run:{r1}:io:z"])
    local.wait(a, ["run:{r1}:io:x"])
    local.wait(b, ["run:{r1}:io:y"])
    local.hand_over("run:{r1}:io:x", [(1, b"b", b"payload")])
    assert a.took == [("run:{r1}:io:x", [(1, b"b", b"payload")])] and b.took == []
    local.done(["run:{r1}:io:y"])  # its writer ended: b reads the store now
    assert (a.woken, b.woken) == (0, 1)
    assert not local.all_local(["run:{r1}:io:y"])
    local.wake_run("run:{r1}:io:")  # the run was stopped here
    assert a.woken == 1
    local.unwait(a, ["run:{r1}:io:x"])
    local.unwait(b, ["run:{r1}:io:y"])
    assert not local.any_waiting()
