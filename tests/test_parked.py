"""The caller's read positions: parked off its critical path, then published exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor, parked
from datagraph.store import keys
from datagraph.streams import END, StreamReader
from datagraph.telemetry import OUTPUT, Telemetry
from tests.test_local_streams import _attach
from tests.test_run_cost import _Pipelines

pytestmark = pytest.mark.anyio

#: Deadline for a position to appear in the store.
DEADLINE = 10.0


def _flow() -> Flow:
    source = Processor("pk_source", ["pk_n"], ["pk_nums"])
    double = Processor("pk_double", ["pk_nums"], ["pk_out"])

    @source
    async def _source(pk_n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await pk_n.first()):
            yield IOVal("pk_nums", i)

    @double
    async def _double(pk_nums: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for x in pk_nums:
            yield IOVal("pk_out", 2 * x)

    return Flow.from_processors(source, double, name="parked").resolve()


async def _position(supervisor: Supervisor, run_id: str) -> str | None:
    runtime = await supervisor.runtime()
    raw = await runtime.client.custom_command(["HGET", keys.pos(run_id), keys.pos_field(OUTPUT, "pk_out")])
    return raw.decode() if isinstance(raw, bytes) else raw


async def _published(supervisor: Supervisor, run_id: str, expected: str) -> None:
    with anyio.fail_after(DEADLINE):
        while True:
            if await _position(supervisor, run_id) == expected:
                return
            await anyio.sleep(0.01)


async def _finished(supervisor: Supervisor, flow: Flow, n: int) -> IO[int]:
    """The output of a run that has ended (no processor of it reads any more)."""
    out = await supervisor.start_flow(flow, [IOVal("pk_n", n)])
    assert await supervisor.wait(out["pk_out"].run_id, timeout=DEADLINE) == "succeeded"
    return out["pk_out"]


async def test_first_returns_before_the_callers_position_is_published(
    supervisor: Supervisor, valkey_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """first() costs one round trip: its position rides with the next read of the runtime."""
    monkeypatch.setattr(parked, "PUBLISH_DELAY", 60.0)  # the publisher task stays out of it
    # Reads of the store, every one: the caller's collect() below may otherwise be handed
    # its values by the map's writer here, if that writer is not quite done (no read at all).
    await Supervisor.adetach()
    supervisor = _attach(valkey_url, hand_over_local=False)
    flow = _flow()
    out = await _finished(supervisor, flow, 1)
    assert await out.first() == 0
    assert await _position(supervisor, out.run_id) is None  # parked, not published
    runtime = await supervisor.runtime()
    assert runtime.parked

    # The next read in this runtime (another run's) carries it.
    other = await _finished(supervisor, flow, 2)
    assert await other.collect() == [0, 2]
    assert await _position(supervisor, out.run_id) == "1"
    assert runtime.parked  # the collect's own position waits for the read after it
    assert await _position(supervisor, other.run_id) is None


async def test_a_parked_position_is_published_within_the_delay(supervisor: Supervisor) -> None:
    out = await _finished(supervisor, _flow(), 5)
    runtime = await supervisor.runtime()
    pipelines = runtime.parked.pipelines
    with anyio.fail_after(DEADLINE):
        assert await out.collect() == [0, 2, 4, 6, 8]
    started = anyio.current_time()
    await _published(supervisor, out.run_id, "5")
    # Nothing else reads in this runtime: the publisher task sent it, about PUBLISH_DELAY later.
    assert runtime.parked.pipelines == pipelines + 1
    assert anyio.current_time() - started >= parked.PUBLISH_DELAY * 0.5
    assert not runtime.parked


async def test_parked_positions_are_published_when_the_runtime_closes(
    supervisor: Supervisor, valkey_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parked, "PUBLISH_DELAY", 60.0)
    out = await _finished(supervisor, _flow(), 4)
    assert await out.collect() == [0, 2, 4, 6]
    assert await _position(supervisor, out.run_id) is None
    with anyio.fail_after(DEADLINE):
        await Supervisor.adetach()  # the fixture's own adetach then has nothing to close
    again = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"test-secret"
    )
    assert await _position(again, out.run_id) == "4"


async def test_many_runs_at_once_end_with_exact_output_counts(supervisor: Supervisor) -> None:
    """Positions parked together (one pipeline, or riding on reads) all land, each exact."""
    flow = _flow()
    sizes = [1 + i % 7 for i in range(40)]
    runs: dict[str, int] = {}

    async def one(n: int) -> None:
        out = await supervisor.start_flow(flow, [IOVal("pk_n", n)])
        runs[out["pk_out"].run_id] = n
        if n == 1:
            assert await out["pk_out"].first() == 0
        else:
            assert await out["pk_out"].collect() == [2 * i for i in range(n)]

    with anyio.fail_after(DEADLINE * 3):
        async with anyio.create_task_group() as tg:
            for n in sizes:
                tg.start_soon(one, n)
    telemetry = await Telemetry.from_supervisor(supervisor)
    with anyio.fail_after(DEADLINE):
        for run_id, n in runs.items():
            while True:
                run = await telemetry.run(run_id)
                if run is not None and run.edge("pk_out", OUTPUT).read == n:
                    break
                await anyio.sleep(0.01)
            assert run.edge("pk_out", OUTPUT).written == n


async def test_a_reader_that_may_hold_a_writer_back_publishes_at_once(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only positions no writer waits for are parked: a processor's, mid-stream, are not."""
    monkeypatch.setattr(parked, "PUBLISH_DELAY", 60.0)
    release = anyio.Event()
    hold = Processor("pk_hold", ["pk_hn"], ["pk_held"])

    @hold
    async def _hold(pk_hn: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("pk_held", await pk_hn.first())
        await release.wait()  # the stream stays open until the test lets it end
        yield IOVal("pk_held", 2)

    out = (await supervisor.start_flow(Flow.from_processors(hold).resolve(), [IOVal("pk_hn", 1)]))["pk_held"]
    runtime = await supervisor.runtime()
    field = keys.pos_field("pk_reader", "pk_held")

    async def position() -> str | None:
        raw = await runtime.client.custom_command(["HGET", keys.pos(out.run_id), field])
        return raw.decode() if isinstance(raw, bytes) else raw

    with anyio.fail_after(DEADLINE):
        # A processor's reader, stopped before the end: its writer may be waiting for it.
        reader = StreamReader(runtime, out.run_id, ["pk_held"], reader="pk_reader")
        assert await reader.__anext__() == ("pk_held", [1])
        await reader.aclose()
        assert await position() == "1"

        # The same reader name read to the end holds nobody back: parked.
        release.set()
        reader = StreamReader(runtime, out.run_id, ["pk_held"], reader="pk_reader")
        assert [v async for _, v in reader if v is not END] == [[1], [2]]
        assert await position() == "1"  # not yet
        await runtime.parked.publish()
        assert await position() == "2"


@pytest.mark.parametrize(("fold_at_most", "wire"), [(parked.FOLD_AT_MOST, [1]), (5, [6])])
async def test_positions_of_many_runs_go_as_one_command_on_a_standalone_store(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch, fold_at_most: int, wire: list[int]
) -> None:
    """Folded into one script call while the publication is small; a plain pipeline (two
    commands a run) past ``FOLD_AT_MOST``. Either way every position lands exactly."""
    monkeypatch.setattr(parked, "PUBLISH_DELAY", 60.0)
    monkeypatch.setattr(parked, "FOLD_AT_MOST", fold_at_most)
    flow = _flow()
    outs = [await _finished(supervisor, flow, n) for n in (1, 2, 3)]

    async def collect(n: int, out: IO[int]) -> None:
        assert await out.collect() == [2 * i for i in range(n)]

    # At once: no reader's read carries positions another has parked already.
    async with anyio.create_task_group() as tg:
        for n, out in enumerate(outs, 1):
            tg.start_soon(collect, n, out)
    runtime = await supervisor.runtime()
    spy = _Pipelines(runtime.client)
    try:
        with anyio.fail_after(DEADLINE):
            await runtime.parked.publish()
    finally:
        spy.stop()
    assert spy.wire == wire
    assert [command[0] for command in spy.sent[0]] == ["HSET", "EXPIRE"] * 3
    for n, out in enumerate(outs, 1):
        assert await _position(supervisor, out.run_id) == str(n)
