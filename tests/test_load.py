"""Load: 1,000 concurrent runs on one supervisor, each exact, all finished, all expired.

Every run of the three-processor flow gets its own input, so a value that
crossed into another run would show in that run's output.  The supervisor is
attached with a short retention: once the runs have ended, their keys
(``dg:{<run>}:*``) must be gone after it.  (Shorter than a few seconds, and a
caller starved by the other 999 runs may find its run expired before it read
the output: that is the retention working, with a clear RunLostError.)
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.exceptions import StoreError
from datagraph.store import keys
from datagraph.store.client import BlockingPool, StoreAddress

pytestmark = pytest.mark.anyio

RUNS = 1_000
VALUES = 5
# Long enough for a caller held up by 999 other runs to read its run before it expires.
RETENTION = 12

src = Processor("load-src", ["n"], ["xs"])
double = Processor("load-double", ["xs"], ["ys"])
add = Processor("load-add", ["xs", "ys"], ["out"])


@src
async def _src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    base = await n.first()
    for i in range(VALUES):
        yield IOVal("xs", base * 1000 + i)


@double
async def _double(xs: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in xs:
        yield IOVal("ys", 2 * x)


@add
async def _add(xs: IO[int], ys: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x, y in xs.stream_with(ys):
        yield IOVal("out", x + y)


FLOW = Flow.from_processors(src, double, add).resolve()


def expected(k: int) -> list[int]:
    return [3 * (k * 1000 + i) for i in range(VALUES)]


async def run_keys_left(client: Any, run_ids: set[str]) -> list[str]:
    """Keys of ``run_ids`` still in Valkey, found with SCAN (not with KEYS)."""
    left: list[str] = []
    cursor = "0"
    while True:
        cursor_raw, batch = await client.custom_command(["SCAN", cursor, "MATCH", "dg:{*}*", "COUNT", "1000"])
        for raw in batch:
            key = raw.decode()
            run_id = key[key.index("{") + 1 : key.index("}")]
            if run_id in run_ids:
                left.append(key)
        cursor = cursor_raw.decode()
        if cursor == "0":
            return left


async def test_thousand_concurrent_runs_are_exact_finish_and_expire(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"load-secret", retention=RETENTION
    )
    try:
        run_ids: dict[int, str] = {}
        results: dict[int, list[int]] = {}
        errors: dict[int, BaseException] = {}
        started = time.monotonic()

        async def one(k: int) -> None:
            try:
                out = await supervisor.start_flow(FLOW, [IOVal("n", k)])
                run_ids[k] = out["out"].run_id
                results[k] = await out["out"].collect()
            except Exception as exc:  # collected and reported below, with the run's number
                errors[k] = exc

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for k in range(RUNS):
                    tg.start_soon(one, k)
        ran = time.monotonic() - started
        assert not errors, f"{len(errors)} of {RUNS} runs raised, e.g. {next(iter(errors.values()))!r}"
        wrong = {k: got for k, got in results.items() if got != expected(k)}
        assert not wrong, f"{len(wrong)} runs got wrong outputs, e.g. {next(iter(wrong.items()))}"
        assert len(set(run_ids.values())) == RUNS

        states: dict[str, int] = {}

        async def wait(run_id: str) -> None:
            state = await supervisor.wait(run_id, timeout=30)
            states[state] = states.get(state, 0) + 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for run_id in run_ids.values():
                    tg.start_soon(wait, run_id)
        assert states == {"succeeded": RUNS}
        finished = time.monotonic()

        client = (await supervisor.runtime()).client
        ours = set(run_ids.values())
        assert await run_keys_left(client, ours), "the runs' keys should exist within the retention"
        await anyio.sleep(RETENTION)
        # Valkey expires keys actively in the background; give it a few cycles past the retention.
        deadline = time.monotonic() + 10
        left = await run_keys_left(client, ours)
        while left and time.monotonic() < deadline:
            await anyio.sleep(0.25)
            left = await run_keys_left(client, ours)
        assert not left, (
            f"{len(left)} keys of {len({k[k.index('{') + 1 : k.index('}')] for k in left})} runs outlived "
            f"the {RETENTION}s retention by {time.monotonic() - finished - RETENTION:.1f}s, e.g. {left[:5]}"
        )
        print(
            f"\n{RUNS} runs: ran in {ran:.1f}s, all succeeded; keys gone "
            f"{time.monotonic() - finished:.1f}s after the last run ended"
        )
    finally:
        await Supervisor.adetach()


gen = Processor("load-gen", [], ["nums"])


@gen
async def _gen() -> AsyncIterator[IOVal[int]]:
    for i in range(3):
        yield IOVal("nums", i)


async def test_output_read_after_the_run_ended_leaves_no_key_behind(valkey_url: str) -> None:
    """Reading a finished run publishes the caller's position: that key must expire too."""
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"load-secret", retention=RETENTION
    )
    try:
        out = await supervisor.start_flow(Flow.from_processors(gen).resolve())
        run_id = out["nums"].run_id
        assert await supervisor.wait(run_id, timeout=10) == "succeeded"
        assert await out["nums"].collect() == [0, 1, 2]
        client = (await supervisor.runtime()).client
        left = await run_keys_left(client, {run_id})
        ttls = {key: await client.custom_command(["TTL", key]) for key in left}
        assert all(0 <= ttl <= RETENTION for ttl in ttls.values()), f"keys and their TTLs: {ttls}"
    finally:
        await Supervisor.adetach()


slow = Processor("load-slow", ["n"], ["ticks"])


@slow
async def _slow(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        await anyio.sleep(0.3)
        yield IOVal("ticks", i)


async def test_busy_process_does_not_declare_its_own_processors_lost(valkey_url: str) -> None:
    """A heartbeat that is late because this event loop was busy is not a death.

    Under load (500 concurrent runs here) the loop can be too busy to beat
    within the lease; the readers' idle checks then find this very process
    "dead" and fail its own live runs with WorkerLost.  Simulated here by
    backdating this process's last beat while its processor streams.
    """
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url},
        executor=LocalExecutor(),
        secret=b"load-secret",
        heartbeat_interval=60.0,
        read_block=0.05,
    )
    try:
        runtime = await supervisor.runtime()
        out = await supervisor.start_flow(Flow.from_processors(slow).resolve(), [IOVal("n", 5)])
        lease = supervisor.settings.lease
        await runtime.client.custom_command(
            ["ZADD", keys.WORKERS, repr(time.time() - 2 * lease), runtime.worker_id]
        )
        with anyio.fail_after(10):
            assert await out["ticks"].collect() == [0, 1, 2, 3, 4]
            assert await supervisor.wait(out["ticks"].run_id) == "succeeded"
    finally:
        await Supervisor.adetach()


class _Owner:
    """Something to hold a pooled client (the pool returns it when this is collected)."""


async def _worst_stall_while(action: Any) -> tuple[float, BaseException | None]:
    """Run ``action()``; return the longest the event loop went without running, and its error."""
    worst = 0.0
    error: BaseException | None = None

    async def tick() -> None:
        nonlocal worst
        last = time.monotonic()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            worst = max(worst, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.05)
        try:
            await action()
        except Exception as exc:  # returned to the test, which checks it
            error = exc
        await anyio.sleep(0.05)  # let the ticker see the end of a stall
        tg.cancel_scope.cancel()
    return worst, error


@pytest.mark.parametrize("server", ["refusing", "silent"])
async def test_reader_connecting_to_an_unreachable_store_does_not_freeze_the_loop(server: str) -> None:
    """While Valkey restarts, every reader that reconnects must not stop all other tasks.

    glide's ``GlideClient.create`` blocks the event loop until it connects or
    its connection timeout expires, so N readers reconnecting at once froze the
    process (heartbeats included) for N x connect_timeout.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if server == "silent":
        listener.listen(16)  # accepts connections, never answers
    else:
        listener.close()  # nothing listens: refused
    try:
        pool = BlockingPool(StoreAddress(port=port), block=1.0, connect_timeout=1.0)
        owners = [_Owner() for _ in range(3)]

        async def three_readers() -> None:
            async with anyio.create_task_group() as tg:
                for owner in owners:
                    tg.start_soon(pool.acquire, owner)

        started = time.monotonic()
        worst, error = await _worst_stall_while(three_readers)
        assert isinstance(error, ExceptionGroup) and error.subgroup(StoreError) is not None, error
        assert "cannot connect to Valkey" in str(error.exceptions[0])
        assert time.monotonic() - started < 5
        assert worst < 0.5, f"the event loop stood still for {worst:.2f}s"
        pool.close_now()
    finally:
        listener.close()
