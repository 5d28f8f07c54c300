"""Retried runs on real Celery workers: lost workers, warm shutdowns and rolling restarts.

gamma workers (``tests/services/gamma.py``) are started per test; the caller
only declares the specs.  ``g_count`` yields ``range(n)``, one value per
``period``: deterministic, so a retried run must reach the caller as exactly
``range(n)``, once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import anyio
import pytest
import redis

from datagraph import IO, Flow, IOVal, Supervisor
from datagraph.store import keys
from tests.services import specs
from tests.test_celery import Worker, attach_caller, start_worker, wait_for_queues

pytestmark = pytest.mark.celery

FLOW = Flow.from_processors(specs.g_count).resolve()


@pytest.fixture(scope="module")
def urls(valkey_url: str) -> tuple[str, str]:
    """The store (db 0) and the Celery broker (db 1) on the session's Valkey."""
    return valkey_url, valkey_url.rsplit("/", 1)[0] + "/1"


@pytest.fixture(scope="module")
def store(valkey_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(valkey_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


class Gamma:
    """gamma workers started by one test (killed at its end)."""

    def __init__(self, urls: tuple[str, str], store: redis.Redis, logs: Path) -> None:
        self.urls, self.store, self.logs = urls, store, logs
        self.workers: list[Worker] = []

    def start(
        self, pool: str = "threads", concurrency: int = 4, *, wait: bool = True,
        options: Sequence[str] = (), env: Mapping[str, str] | None = None,
    ) -> Worker:
        worker = start_worker("gamma", pool, concurrency, self.urls, self.logs, options=options, env=env)
        self.workers.append(worker)
        if wait:
            slots = concurrency if pool == "prefork" else 1
            wait_for_queues(self.store, [worker], list(specs.GAMMA), slots=slots)
        return worker

    def owning(self, pid: int) -> Worker:
        """The worker whose process (or pool process) has ``pid``."""
        for worker in self.workers:
            if worker.process.pid == pid or _parent(pid) == worker.process.pid:
                return worker
        raise AssertionError(f"no gamma worker of this test has pid {pid}")


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


@pytest.fixture
def gamma_workers(
    urls: tuple[str, str], store: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Gamma]:
    monkeypatch.setenv("DATAGRAPH_SHUTDOWN_GRACE", "1")  # what the workers started here hand over after
    gamma = Gamma(urls, store, tmp_path)
    try:
        yield gamma
    finally:
        for worker in gamma.workers:
            worker.kill()


async def _running_pid(caller: Supervisor, run_id: str, deadline: float = 30.0) -> int:
    """The pid of the worker process running g_count of ``run_id`` (once it runs)."""
    runtime = await caller.runtime()
    with anyio.fail_after(deadline):
        while True:
            client = runtime.client
            worker_id = await client.custom_command(["HGET", keys.stats(run_id), "worker:g_count"])
            if worker_id is not None:
                return int(await client.custom_command(["HGET", keys.worker(worker_id.decode()), "pid"]))
            await anyio.sleep(0.05)


async def _attempts(caller: Supervisor, run_id: str) -> list[dict[str, object]]:
    runtime = await caller.runtime()
    raw = await runtime.client.custom_command(["HGET", keys.run(run_id), "attempts"])
    return list(json.loads(raw)) if raw else []


async def _current(caller: Supervisor, run_id: str) -> str:
    attempts = await _attempts(caller, run_id)
    return str(attempts[-1]["run_id"]) if attempts else run_id


@pytest.mark.anyio
async def test_a_worker_killed_mid_stream_with_retries_gives_the_caller_every_value_once(
    gamma_workers: Gamma, urls: tuple[str, str], anyio_backend: str
) -> None:
    """kill -9 of the worker running g_count after 10 values: the caller reads range(60), once."""
    gamma_workers.start()
    gamma_workers.start()
    async with attach_caller(urls) as caller:
        out = await caller.start_flow(FLOW, [IOVal("g_job", {"n": 60, "period": 0.05})], retries=1)
        io: IO[int] = out["g_counted"]
        got: list[int] = []
        killed = None
        with anyio.fail_after(60):
            async for value in io.stream():
                got.append(value)
                if len(got) == 10:
                    killed = gamma_workers.owning(await _running_pid(caller, io.run_id))
                    killed.kill()
        assert got == list(range(60))
        assert killed is not None and killed.process.poll() is not None
        attempts = await _attempts(caller, io.run_id)
        assert [a["cause"] for a in attempts] == ["WorkerLost", None]
        assert await caller.wait(io.run_id, timeout=10) == "succeeded"


@pytest.mark.anyio
@pytest.mark.parametrize("pool", ["threads", "prefork"])
async def test_a_warm_shutdown_hands_a_streaming_processor_over_to_another_worker(
    gamma_workers: Gamma, urls: tuple[str, str], anyio_backend: str, pool: str
) -> None:
    """SIGTERM to the worker running an endless-looking stream: after shutdown_grace (1 s)
    it hands the processor over and exits; the run goes on elsewhere, exact at the caller.

    The prefork worker gets its grace from ``--shutdown-grace 1``, which must win over
    the setting (30 s here, which would outlast the test's deadline)."""
    if pool == "prefork":
        grace_by_option = {"options": ["--shutdown-grace", "1"], "env": {"DATAGRAPH_SHUTDOWN_GRACE": "30"}}
        gamma_workers.start(pool, 2, **grace_by_option)  # type: ignore[arg-type]
    else:
        gamma_workers.start(pool, 2)
    n = 200  # 10 s of values: a busy machine may take most of that to start the next worker
    async with attach_caller(urls) as caller:
        out = await caller.start_flow(FLOW, [IOVal("g_job", {"n": n, "period": 0.05})], retries=1)
        io: IO[int] = out["g_counted"]
        stopping = gamma_workers.owning(await _running_pid(caller, io.run_id))
        # Where the run goes next; the stream goes on while it starts.
        successor = gamma_workers.start("threads", 2, wait=False)
        ready = anyio.Event()

        async def successor_ready() -> None:
            await anyio.to_thread.run_sync(
                lambda: wait_for_queues(gamma_workers.store, [successor], list(specs.GAMMA), slots=1)
            )
            ready.set()

        got: list[int] = []
        signalled = exited = 0.0
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(successor_ready)
                async for value in io.stream():
                    got.append(value)
                    if not signalled and len(got) >= 10 and ready.is_set():
                        os.kill(stopping.process.pid, signal.SIGTERM)  # the main process, as a deploy does
                        signalled = time.monotonic()
                    if signalled and not exited and stopping.process.poll() is not None:
                        exited = time.monotonic()
        assert signalled, "the stream ended before the next worker was up: nothing was handed over"
        assert got == list(range(n))
        await anyio.to_thread.run_sync(lambda: stopping.process.wait(20))
        exited = exited or time.monotonic()
        print(f"SIGTERM -> {pool} worker exited within {exited - signalled:.1f}s (grace 1 s)")
        assert stopping.process.returncode == 0, stopping.output()
        attempts = await _attempts(caller, io.run_id)
        assert [a["cause"] for a in attempts] == ["WorkerStopping", None]
        assert "shutdown_grace=1s" in str(attempts[0]["message"])


@pytest.mark.anyio
async def test_a_rolling_restart_of_every_worker_leaves_every_run_exact(
    gamma_workers: Gamma, urls: tuple[str, str], anyio_backend: str
) -> None:
    """20 runs stream through gamma while each of its 3 workers is stopped and replaced in turn."""
    for _ in range(3):
        gamma_workers.start("threads", 12)
    n = 200
    async with attach_caller(urls) as caller:
        job = [IOVal("g_job", {"n": n, "period": 0.05})]
        outs = [(await caller.start_flow(FLOW, job, retries=5))["g_counted"] for _ in range(20)]
        results: dict[int, list[int]] = {}

        async def read(index: int, io: IO[int]) -> None:
            results[index] = [v async for v in io.stream()]

        async def roll() -> None:
            for worker in list(gamma_workers.workers):
                await anyio.sleep(1.0)
                os.kill(worker.process.pid, signal.SIGTERM)
                await anyio.to_thread.run_sync(lambda w=worker: w.process.wait(30))
                await anyio.to_thread.run_sync(gamma_workers.start, "threads", 12)

        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                for index, io in enumerate(outs):
                    tg.start_soon(read, index, io)
                tg.start_soon(roll)
        assert all(results[i] == list(range(n)) for i in range(20)), {
            i: len(v) for i, v in results.items() if v != list(range(n))
        }
        causes = [a["cause"] for io in outs for a in await _attempts(caller, io.run_id)]
        print(f"attempts: {len(causes)} for 20 runs; causes {sorted(set(map(str, causes)))}")
        assert set(causes) <= {"WorkerStopping", None}
        assert all(w.process.returncode == 0 for w in gamma_workers.workers[:3])
