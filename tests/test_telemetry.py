"""The telemetry read API: run snapshots with per-edge counts, workers, runs, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from telemetry_worker import HEARTBEAT, start_worker, wait_for

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import ProcessorFailed, RunCancelled
from datagraph.settings import Settings
from datagraph.snapshots import run_snapshot
from datagraph.store import keys
from datagraph.telemetry import INPUT, OUTPUT, EdgeSnapshot, RunSnapshot, Telemetry

pytestmark = [pytest.mark.anyio, pytest.mark.stores]


async def _snapshot(telemetry: Telemetry, run_id: str) -> RunSnapshot:
    snapshot = await telemetry.run(run_id)
    assert snapshot is not None
    return snapshot


async def test_finished_run_edges_balance(supervisor: Supervisor) -> None:
    n = 2500
    gen = Processor("tel_gen", ["tel_n"], ["tel_nums"])
    square = Processor("tel_square", ["tel_nums"], ["tel_squares"])

    @gen
    async def _gen(tel_n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await tel_n.first()):
            yield IOVal("tel_nums", i)

    @square
    async def _square(tel_nums: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for x in tel_nums:
            yield IOVal("tel_squares", x * x)

    flow = Flow.from_processors(gen, square, name="tel-squares").resolve()
    out = await supervisor.start_flow(flow, [IOVal("tel_n", n)])
    assert len(await out["tel_squares"].collect()) == n
    run_id = out["tel_squares"].run_id
    assert await supervisor.wait(run_id, timeout=10) == "succeeded"

    telemetry = await Telemetry.from_supervisor(supervisor)
    # The caller's last read position is published within datagraph.parked.PUBLISH_DELAY.
    with anyio.fail_after(5):
        while True:
            run = await _snapshot(telemetry, run_id)
            if run.edge("tel_squares", OUTPUT).read == n:
                break
            await anyio.sleep(0.01)
    assert run.state == "succeeded"
    assert run.flow == "tel-squares"
    assert run.processors == ("tel_gen", "tel_square")
    assert run.done == 2
    assert run.error is None
    assert run.inputs["tel_n"].count == 1
    assert run.inputs["tel_n"].first == repr(n)
    assert run.ended is not None and run.started is not None and run.ended >= run.started
    assert [(e.io, e.source, e.target) for e in run.edges] == [
        ("tel_n", INPUT, "tel_gen"),
        ("tel_nums", "tel_gen", "tel_square"),
        ("tel_squares", "tel_square", OUTPUT),
    ]
    assert run.edge("tel_n", "tel_gen").written == run.edge("tel_n", "tel_gen").read == 1
    for edge in run.edges[1:]:
        assert (edge.written, edge.read, edge.backlog) == (n, n, 0), edge
        assert edge.throughput == 0.0
        assert edge.last_activity is not None
    assert run.edge("tel_nums", "tel_square").backpressure_limit == supervisor.settings.max_backlog
    assert run.edge("tel_squares", OUTPUT).backpressure_limit is None
    for state in run.processor_states:
        assert state.state == "done"
        assert state.worker == supervisor.worker_id
        assert state.activity is None
        assert state.busy + state.idle + state.backpressured == pytest.approx(1.0)

    listed = [r.id for r in await telemetry.runs(limit=20)]
    assert run_id in listed
    assert run_id in [r.id for r in await telemetry.runs(state="succeeded", limit=20)]
    assert run_id not in [r.id for r in await telemetry.runs(state=["failed", "cancelled"])]
    assert [r.id for r in await telemetry.runs(flow="tel-squares", limit=1)] == [run_id]
    assert run_id not in [r.id for r in await telemetry.runs(flow="tel-other")]
    data = json.loads(run.to_json())
    assert data["edges"][1] == {
        **data["edges"][1], "io": "tel_nums", "written": n, "read": n, "backlog": 0
    }


async def test_backlog_mid_run_is_positive_and_bounded(supervisor: Supervisor) -> None:
    limit, n = 100, 5000
    gate = anyio.Event()
    fast = Processor("tel_fast", ["tel_count"], ["tel_items"], max_backlog=limit)
    slow = Processor("tel_slow", ["tel_items"], ["tel_seen"])

    @fast
    async def _fast(tel_count: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await tel_count.first()):
            yield IOVal("tel_items", i)

    @slow
    async def _slow(tel_items: IO[int]) -> AsyncIterator[IOVal[int]]:
        seen = 0
        async for _ in tel_items:
            seen += 1
            if seen == 10:
                await gate.wait()
        yield IOVal("tel_seen", seen)

    out = await supervisor.start_flow(
        Flow.from_processors(fast, slow).resolve(), [IOVal("tel_count", n)]
    )
    run_id = out["tel_seen"].run_id
    telemetry = await Telemetry.from_supervisor(supervisor)
    async def held_back() -> EdgeSnapshot | None:
        edge = (await _snapshot(telemetry, run_id)).edge("tel_items", "tel_slow")
        return edge if edge.backlog > 0 and edge.written >= limit else None

    await wait_for(held_back)
    await anyio.sleep(0.3)  # the writer is held back: more time changes nothing
    run = await _snapshot(telemetry, run_id)
    edge = run.edge("tel_items", "tel_slow")
    assert 0 < edge.backlog <= limit
    assert edge.written < n
    assert edge.backpressure_limit == limit
    assert edge.fill == edge.backlog / limit
    assert run.state == "running"
    assert run.processor_state("tel_fast").state == "running"
    assert run.processor_state("tel_slow").state == "running"
    assert run.processor_state("tel_fast").worker_online is True

    gate.set()
    assert await out["tel_seen"].collect() == [n]
    assert await supervisor.wait(run_id, timeout=10) == "succeeded"
    edge = (await _snapshot(telemetry, run_id)).edge("tel_items", "tel_slow")
    assert (edge.written, edge.read, edge.backlog) == (n, n, 0)


async def test_failed_run_carries_the_traceback(supervisor: Supervisor) -> None:
    boom = Processor("tel_boom", ["tel_in"], ["tel_out"])

    @boom
    async def _boom(tel_in: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("tel_out", 1)
        raise ValueError(f"bad value {await tel_in.first()}")

    out = await supervisor.start_flow(Flow.from_processors(boom).resolve(), [IOVal("tel_in", 3)])
    run_id = out["tel_out"].run_id
    with pytest.raises(ProcessorFailed):
        await out["tel_out"].collect()
    assert await supervisor.wait(run_id, timeout=10) == "failed"

    telemetry = await Telemetry.from_supervisor(supervisor)
    run = await _snapshot(telemetry, run_id)
    assert run.state == "failed"
    assert run.error is not None
    assert run.error.processor == "tel_boom"
    assert run.error.type == "ValueError"
    assert run.error.message == "bad value 3"
    assert run.error.traceback.startswith("Traceback (most recent call last)")
    assert 'raise ValueError(f"bad value' in run.error.traceback
    assert run.error.worker == supervisor.worker_id
    assert run.processor_state("tel_boom").state == "failed"
    assert run.edge("tel_out", OUTPUT).written == 1
    failed = await telemetry.runs(state="failed", limit=20)
    summary = next(r for r in failed if r.id == run_id)
    assert summary.error == run.error


async def test_cancel_stops_the_run(supervisor: Supervisor) -> None:
    ticker = Processor("tel_ticker", ["tel_start"], ["tel_ticks"])
    relay = Processor("tel_relay", ["tel_ticks"], ["tel_relayed"])

    @ticker
    async def _ticker(tel_start: IO[int]) -> AsyncIterator[IOVal[int]]:
        i = await tel_start.first()
        while True:
            yield IOVal("tel_ticks", i)
            i += 1
            await anyio.sleep(0.002)

    @relay
    async def _relay(tel_ticks: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for value in tel_ticks:
            yield IOVal("tel_relayed", value)

    out = await supervisor.start_flow(
        Flow.from_processors(ticker, relay).resolve(), [IOVal("tel_start", 0)]
    )
    run_id = out["tel_relayed"].run_id
    values = out["tel_relayed"].stream()
    with anyio.fail_after(10):
        assert [await values.__anext__() for _ in range(5)] == [0, 1, 2, 3, 4]
        assert await supervisor.cancel(run_id) is True
        with pytest.raises(RunCancelled):
            while True:
                await values.__anext__()
    await values.aclose()
    assert await supervisor.cancel(run_id) is False
    assert await supervisor.run_state(run_id) == "cancelled"

    telemetry = await Telemetry.from_supervisor(supervisor)
    async def stopped() -> RunSnapshot | None:
        run = await _snapshot(telemetry, run_id)
        return run if all(s.state == "cancelled" for s in run.processor_states) else None

    run = await wait_for(stopped)
    assert run.state == "cancelled"
    assert run.ended is not None
    assert run_id in [r.id for r in await telemetry.runs(state="cancelled", limit=20)]


async def test_unknown_and_expired_runs(supervisor: Supervisor) -> None:
    telemetry = await Telemetry.from_supervisor(supervisor)
    assert await telemetry.run("no-such-run") is None
    assert await telemetry.run_snapshots([]) == []
    # A run whose keys expired leaves its id in the index: runs() skips and drops it.
    await telemetry.client.custom_command(["ZADD", keys.RUNS, repr(time.time() + 3600), "tel-gone"])
    assert "tel-gone" not in [r.id for r in await telemetry.runs()]
    assert await telemetry.client.custom_command(["ZSCORE", keys.RUNS, "tel-gone"]) is None
    with pytest.raises(ValueError, match="unknown run state"):
        await telemetry.runs(state="exploded")


async def test_runs_page_back_by_start_time(supervisor: Supervisor) -> None:
    echo = Processor("tel_echo", ["tel_x"], ["tel_y"])

    @echo
    async def _echo(tel_x: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("tel_y", await tel_x.first())

    flow = Flow.from_processors(echo).resolve()
    ids = []
    for i in range(3):
        out = await supervisor.start_flow(flow, [IOVal("tel_x", i)])
        await out["tel_y"].collect()
        ids.append(out["tel_y"].run_id)
    telemetry = await Telemetry.from_supervisor(supervisor)
    first = await telemetry.runs(limit=2)
    assert [r.id for r in first] == ids[:0:-1]
    second = await telemetry.runs(limit=1, before=first[-1].started)
    assert [r.id for r in second] == [ids[0]]


async def test_workers_online_offline_and_purged(supervisor: Supervisor) -> None:
    settings = Settings(worker_retention=60.0)
    telemetry = Telemetry((await supervisor.runtime()).client, settings)
    client = telemetry.client
    now = time.time()

    async def fake_worker(worker_id: str, beat: float, **fields: Any) -> None:
        await client.custom_command(["ZADD", keys.WORKERS, repr(beat), worker_id])
        description = {"host": "h", "pid": "7", "executor": "local", "started": repr(beat - 1),
                       "processors": json.dumps(["tel_ghost"]), "queues": "[]", **fields}
        await client.custom_command(
            ["HSET", keys.worker(worker_id), *(x for kv in description.items() for x in kv)]
        )
        await client.custom_command(
            ["HSET", keys.IMPLEMENTERS, keys.implementer_field("tel_ghost", worker_id), repr(beat)]
        )

    await fake_worker("tel-w-live", now, lease="5.0")
    await fake_worker("tel-w-quiet", now - 30)
    await fake_worker("tel-w-stopped", now, stopped=repr(now))
    await fake_worker("tel-w-gone", now - 120)
    await client.custom_command(["HSET", keys.PROCESSORS, "tel_ghost", json.dumps(
        {"name": "tel_ghost", "inputs": [], "outputs": [], "updated": now - 120}
    )])

    workers = {w.id: w for w in await telemetry.workers()}
    assert workers["tel-w-live"].online is True
    assert workers["tel-w-live"].pid == 7
    assert workers["tel-w-live"].processors == ("tel_ghost",)
    assert workers["tel-w-quiet"].online is False
    assert workers["tel-w-quiet"].seconds_since_beat >= 30
    assert workers["tel-w-stopped"].online is False
    assert "tel-w-gone" not in workers
    assert await client.custom_command(["ZSCORE", keys.WORKERS, "tel-w-gone"]) is None
    assert await client.custom_command(["EXISTS", keys.worker("tel-w-gone")]) == 0

    ghost = await telemetry.processor("tel_ghost")
    assert ghost is not None
    assert set(ghost.workers) == {"tel-w-live", "tel-w-quiet", "tel-w-stopped"}
    assert ghost.online_workers == ("tel-w-live",)
    assert ghost.online is True

    # Once every implementer is past retention, the registration goes too.
    later = now + 200
    assert set(await telemetry.purge(later)) >= {"tel-w-live", "tel-w-quiet", "tel-w-stopped"}
    assert await client.custom_command(["HGET", keys.PROCESSORS, "tel_ghost"]) is None


async def test_killed_worker_goes_offline_within_the_lease(valkey_url: str) -> None:
    lease = Settings(heartbeat_interval=HEARTBEAT).lease
    async with await Telemetry.connect(valkey_url) as telemetry:
        with start_worker(valkey_url) as worker:
            async def online() -> bool:
                return any(w.id == worker.id and w.online for w in await telemetry.workers())

            async def offline() -> bool:
                return not await online()

            await wait_for(online)
            info = await telemetry.processor("tw_source")
            assert info is not None and worker.id in info.online_workers
            worker.kill()
            killed, killed_at = time.monotonic(), time.time()
            await wait_for(offline)
            # Offline once the lease has passed since the last beat (polling adds a little).
            assert time.monotonic() - killed <= lease + 0.5
        (snapshot,) = [w for w in await telemetry.workers() if w.id == worker.id]
        assert snapshot.online is False
        assert snapshot.last_beat <= killed_at
        assert snapshot.lease == pytest.approx(lease)
        info = await telemetry.processor("tw_source")
        assert info is not None and worker.id in info.workers
        assert worker.id not in info.online_workers


def test_run_snapshot_from_store_replies() -> None:
    now = 1000.0
    plan = {
        "flow": {"name": "f", "processors": [
            {"name": "a", "inputs": ["x"], "outputs": ["y"]},
            {"name": "b", "inputs": ["y"], "outputs": ["z"]},
        ]},
        "producers": {"y": "a", "z": "b"},
        "readers": {"x": ["a"], "y": ["b"]},
        "floating_inputs": ["x"],
        "outputs": ["z"],
        "max_backlog": {"a": 40, "b": 10000},
    }
    record = {"state": "running", "started": "990.0", "plan": json.dumps(plan), "done": "0",
              "inputs": json.dumps({"x": {"count": 2, "first": "1", "type": "int"}})}
    stats = {
        "written:x": "2", "written:y": "50", "written:z": "5",
        "rate:y": "120.5", "last:y": "999.5",  # fresh
        "rate:z": "30", "last:z": "990.0",  # stale: nothing moved for 10 s
        "state:a": "running", "worker:a": "w1", "busy:a": "1.0", "idle:a": "1.0", "bp:a": "8.0",
        "state:b": "running", "worker:b": "w2",
    }
    pos = {"a/x": "2", "b/y": "20", "(output)/z": "5"}
    run = run_snapshot("r", record, stats, pos, online={"w1"}, now=now,
                       windows={"a": (3.0, 1.0, 0.0)})
    assert run.duration == 10.0
    y = run.edge("y", "b")
    assert (y.written, y.read, y.backlog, y.backpressure_limit) == (50, 20, 30, 40)
    assert y.fill == 30 / 40
    assert y.throughput == 120.5
    assert run.edge("z", OUTPUT).throughput == 0.0
    assert run.edge("x", "a").source == INPUT
    assert run.edge("x", "a").last_activity == 990.0
    assert run.last_activity == 999.5
    a, b = run.processor_states
    assert (a.busy, a.idle, a.backpressured, a.activity) == (0.75, 0.25, 0.0, "busy")
    assert a.backpressured_seconds == 8.0
    assert a.worker_online is True
    assert b.worker_online is False
    assert (b.busy, b.activity) == (0.0, None)
    # Without a window the whole run counts.
    run = run_snapshot("r", record, stats, pos, online=set(), now=now)
    assert run.processor_state("a").activity == "backpressured"
    assert run.processor_state("a").backpressured == 0.8
