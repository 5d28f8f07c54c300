"""Heartbeats, leases and failing the work of dead workers (datagraph/liveness.py).

The Celery tests kill real workers; these tests stand a "ghost" worker id in
for a dead process, so every path is checked quickly and on both backends.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import anyio
import pytest

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor, liveness, streams
from datagraph.exceptions import ProcessorFailed
from datagraph.runtime import Runtime
from datagraph.store import keys

pytestmark = pytest.mark.anyio

# Fast beats so that leases expire within a test: lease = 0.25 * 2.5 = 0.625 s.
FAST = {"heartbeat_interval": 0.25, "heartbeat_misses": 2, "read_block": 0.1}

hang = Processor("live_hang", ["n"], ["hung"])
after_hang = Processor("live_after_hang", ["hung"], ["out"])


@hang
async def _hang(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    yield IOVal("hung", await n.first())
    await anyio.sleep_forever()


@after_hang
async def _after_hang(hung: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for value in hung:
        yield IOVal("out", value)


@pytest.fixture
async def fast(valkey_url: str, anyio_backend: str) -> AsyncIterator[Supervisor]:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"test-secret", **FAST
    )
    try:
        yield supervisor
    finally:
        await Supervisor.adetach()


async def poll_until(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Poll the store until ``check()`` holds; fail after ``seconds``."""
    with anyio.fail_after(seconds):
        while True:
            if await check():
                return
            await anyio.sleep(0.01)


async def _ghost(runtime: Runtime, *, age: float, running: Sequence[str] = ()) -> str:
    """A worker id whose last beat was ``age`` seconds ago (a stand-in for a dead process)."""
    ghost = f"ghost:{os.getpid()}:{time.monotonic_ns()}"
    beat = time.time() - age
    await runtime.client.custom_command(["ZADD", keys.WORKERS, repr(beat), ghost])
    await runtime.client.custom_command(
        ["HSET", keys.worker(ghost), "host", "nowhere", "pid", "0", "executor", "celery",
         "started", repr(beat), "last_beat", repr(beat), "processors", "[]", "queues", "[]",
         "running", json.dumps(list(running))]
    )
    return ghost


async def _forget(runtime: Runtime, *ghosts: str) -> None:
    for ghost in ghosts:
        await runtime.client.custom_command(["ZREM", keys.WORKERS, ghost])
        await runtime.client.custom_command(["DEL", keys.worker(ghost)])


async def _move_to(runtime: Runtime, run_id: str, processor: str, worker: str) -> None:
    """Pretend ``processor`` runs on ``worker`` (the runner recorded it as running here)."""
    async def started() -> bool:
        state = await runtime.client.custom_command(["HGET", keys.stats(run_id), f"state:{processor}"])
        return bool(state == b"running")

    await poll_until(started, seconds=5)
    await runtime.client.custom_command(["HSET", keys.stats(run_id), f"worker:{processor}", worker])


async def test_every_process_heartbeats_with_the_agreed_fields(fast: Supervisor) -> None:
    runtime = await fast.runtime()
    async def listed() -> bool:
        return await runtime.client.custom_command(["ZSCORE", keys.WORKERS, fast.worker_id]) is not None

    await poll_until(listed, seconds=5)
    raw = await runtime.client.custom_command(["HGETALL", keys.worker(fast.worker_id)])
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    assert fields["pid"] == str(os.getpid())
    assert fields["executor"] == "local"
    assert fields["host"]
    assert abs(float(fields["last_beat"]) - time.time()) < 5
    assert float(fields["started"]) <= float(fields["last_beat"])
    assert "live_hang" in json.loads(fields["processors"])
    assert json.loads(fields["queues"]) == []
    assert json.loads(fields["running"]) == []
    assert float(fields["lease"]) == pytest.approx(0.625)
    ttl = await runtime.client.custom_command(["TTL", keys.worker(fast.worker_id)])
    assert 0 < ttl <= fast.settings.worker_retention + fast.settings.lease + 1
    # It keeps beating.
    first = float(fields["last_beat"])

    async def beat_again() -> bool:
        last = await runtime.client.custom_command(["HGET", keys.worker(fast.worker_id), "last_beat"])
        return float(last) > first

    await poll_until(beat_again, seconds=5)


async def test_live_workers_lists_only_fresh_beats(fast: Supervisor) -> None:
    runtime = await fast.runtime()
    ghost = await _ghost(runtime, age=60)
    try:
        await liveness.beat(fast, runtime)
        ids = {w.id for w in await liveness.live_workers(runtime)}
        assert fast.worker_id in ids
        assert ghost not in ids
    finally:
        await _forget(runtime, ghost)


async def test_reader_fails_run_when_producer_worker_stops_beating(fast: Supervisor) -> None:
    runtime = await fast.runtime()
    out = await fast.start_flow(Flow.from_processors(hang).resolve(), [IOVal("n", 7)])
    run_id = out["hung"].run_id
    ghost = await _ghost(runtime, age=60)
    try:
        await _move_to(runtime, run_id, "live_hang", ghost)
        got = []
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(ProcessorFailed) as info:
            async for value in out["hung"].stream():
                got.append(value)
        assert time.monotonic() - started < 3
    finally:
        await _forget(runtime, ghost)
    assert got == [7]
    error = info.value
    assert error.processor == "live_hang"
    assert error.error_type == "WorkerLost"
    assert error.worker == ghost
    assert "live_hang" in str(error) and ghost in str(error)
    assert await fast.run_state(run_id) == "failed"
    recorded = json.loads(await runtime.client.custom_command(["HGET", keys.run(run_id), "error"]))
    assert recorded["processor"] == "live_hang" and recorded["worker"] == ghost


async def test_downstream_processor_fails_naming_the_lost_one(fast: Supervisor) -> None:
    runtime = await fast.runtime()
    flow = Flow.from_processors(hang, after_hang).resolve()
    out = await fast.start_flow(flow, [IOVal("n", 3)])
    ghost = await _ghost(runtime, age=60)
    try:
        await _move_to(runtime, out["out"].run_id, "live_hang", ghost)
        with anyio.fail_after(10), pytest.raises(ProcessorFailed) as info:
            await out["out"].collect()
    finally:
        await _forget(runtime, ghost)
    assert info.value.processor == "live_hang"
    assert info.value.worker == ghost


async def test_a_worker_that_never_beat_is_not_declared_dead(fast: Supervisor) -> None:
    runtime = await fast.runtime()
    out = await fast.start_flow(Flow.from_processors(hang).resolve(), [IOVal("n", 1)])
    run_id = out["hung"].run_id
    await _move_to(runtime, run_id, "live_hang", "never-beat:1:abc")
    assert await liveness.check_processors(runtime, run_id, ["live_hang"]) == []
    # Nor is a live one: this process beats.
    await runtime.client.custom_command(["HSET", keys.stats(run_id), "worker:live_hang", fast.worker_id])
    await liveness.beat(fast, runtime)
    assert await liveness.check_processors(runtime, run_id, ["live_hang"]) == []
    assert await fast.run_state(run_id) == "running"
    await fast.cancel(run_id)


async def test_reaper_fails_the_work_of_a_dead_worker_once(fast: Supervisor) -> None:
    runtime = await fast.runtime()
    out = await fast.start_flow(Flow.from_processors(hang).resolve(), [IOVal("n", 1)])
    run_id = out["hung"].run_id
    ghost = await _ghost(runtime, age=2, running=[f"{run_id}/live_hang"])
    try:
        await _move_to(runtime, run_id, "live_hang", ghost)
        # Nobody reads: a beat of any live process notices the dead worker.
        async def failed() -> bool:
            return await fast.run_state(run_id) == "failed"

        await poll_until(failed, seconds=10)
        claimed = await runtime.client.custom_command(["HGET", keys.worker(ghost), "reaped"])
        assert claimed == fast.worker_id.encode()
        assert await liveness.reap_dead_workers(runtime) == 0
        with pytest.raises(ProcessorFailed, match="live_hang"):
            await out["hung"].collect()
        markers = await runtime.client.custom_command(["XLEN", keys.stream(run_id, "hung")])
        assert markers == 2  # the value, then exactly one failure marker
    finally:
        await _forget(runtime, ghost)


async def test_processor_nobody_started_fails_after_its_deadline(fast: Supervisor) -> None:
    runtime = await fast.runtime()
    out = await fast.start_flow(Flow.from_processors(hang).resolve(), [IOVal("n", 1)])
    run_id = out["hung"].run_id
    await _move_to(runtime, run_id, "live_hang", fast.worker_id)
    # As a dispatcher records it: dispatched, to be started 1 s ago at the latest.
    now = time.time()
    await runtime.client.custom_command(
        ["HSET", keys.stats(run_id), "state:live_hang", "dispatched",
         "dispatched:live_hang", repr(now - 3), "start_by:live_hang", repr(now - 1)]
    )
    failures = await liveness.check_processors(runtime, run_id, ["live_hang"])
    assert [(f.processor, f.kind) for f in failures] == [("live_hang", "DispatchTimeout")]
    with pytest.raises(ProcessorFailed, match=r"no worker started processor 'live_hang'"):
        await out["hung"].collect()
    # Failing is idempotent: the processor is no longer "dispatched".
    assert await liveness.check_processors(runtime, run_id, ["live_hang"]) == []


def test_idle_reads_check_liveness() -> None:
    assert liveness.check_on_idle_read in streams.idle_hooks
    assert liveness.start_heartbeat in Supervisor.runtime_hooks


def test_a_forked_child_is_a_worker_of_its_own(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, secret=b"test-secret")
    try:
        read, write = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process that has threads (glide's).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                os.write(write, Supervisor.instance.worker_id.encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            child_id = pipe.read().decode()
        os.waitpid(pid, 0)
    finally:
        Supervisor.detach()
    assert child_id and child_id != supervisor.worker_id
    assert f":{pid}:" in child_id


async def _keep_beating(runtime: Runtime, ghost: str) -> None:
    while True:
        await runtime.client.custom_command(["ZADD", keys.WORKERS, repr(time.time()), ghost])
        await anyio.sleep(0.05)


@pytest.mark.parametrize(
    ("executor", "lists_it", "fails"),
    [("celery", False, True), ("celery", True, False), ("local", False, False)],
    ids=["end-lost", "still-running", "local-worker"],
)
async def test_a_live_worker_no_longer_running_a_processor_whose_end_is_missing_fails_it(
    fast: Supervisor, executor: str, lists_it: bool, fails: bool
) -> None:
    """The store lost a processor's last writes (a failover): readers fail within a lease, not idle_timeout.

    Its worker is alive and says it no longer runs the processor, yet the store
    still has it running with no end marker. A worker that still lists it, or a
    LocalExecutor process (which lists nothing), is left alone.
    """
    runtime = await fast.runtime()
    out = await fast.start_flow(Flow.from_processors(hang).resolve(), [IOVal("n", 7)])
    run_id = out["hung"].run_id
    ghost = await _ghost(runtime, age=0, running=[f"{run_id}/live_hang"] if lists_it else [])
    await runtime.client.custom_command(["HSET", keys.worker(ghost), "executor", executor])
    got: list[int] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_beating, runtime, ghost)
            await _move_to(runtime, run_id, "live_hang", ghost)
            started = time.monotonic()
            if fails:
                with anyio.fail_after(10), pytest.raises(ProcessorFailed) as info:
                    async for value in out["hung"].stream():
                        got.append(value)
                assert time.monotonic() - started < 3 * fast.settings.lease + 2
                assert info.value.processor == "live_hang"
                assert info.value.error_type == "WritesLost"
                assert ghost in str(info.value) and "last writes" in str(info.value)
            else:
                with anyio.move_on_after(4 * fast.settings.lease):
                    async for value in out["hung"].stream():
                        got.append(value)
                state = await runtime.client.custom_command(["HGET", keys.stats(run_id), "state:live_hang"])
                assert state == b"running"
            tg.cancel_scope.cancel()
    finally:
        await _forget(runtime, ghost)
        await fast.cancel(run_id)
    assert got == [7]
