"""The executor-agnostic suite: what every executor must do, run through each of them.

``local`` (LocalExecutor), ``process`` (ProcessExecutor, real worker processes),
``subprocess`` (the third-party example of ``docs/executors.md``, imported
from ``docs/examples``: a process per processor) and ``celery`` (a real ``celery worker`` of the service
``tests/services/omni.py``), each on asyncio and Trio.  The processors live in
``tests/executor_processors.py``, an importable module, as every executor but
LocalExecutor needs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from datagraph import Flow, IOVal, LocalExecutor, Supervisor
from datagraph.exceptions import ProcessorFailed, RunCancelled
from datagraph.executors import Executor, ProcessExecutor
from datagraph.store import keys
from docs.examples.subprocess_executor import SubprocessExecutor
from tests import executor_processors as xp

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"celery-test-secret"  # the Celery test services' (tests/services/_service.py)
CELERY = pytest.param("celery", marks=pytest.mark.celery)
EXECUTORS = ["local", "process", "subprocess", CELERY]
#: kill -9 of a worker to its reader's error, with default settings (lease 5 s).
KILL_DEADLINE = 10.0


# -- the Celery service (started once, restarted if a test killed it) ------------------


@dataclass
class CeleryService:
    store_url: str
    broker_url: str
    logs: Path
    process: subprocess.Popen[bytes] | None = None

    def ensure(self) -> None:
        """Start the omni worker unless it runs; wait until it serves every processor."""
        if self.process is not None and self.process.poll() is None:
            return
        log = self.logs / f"omni-{uuid.uuid4().hex[:6]}.log"
        env = {
            **os.environ, "DG_TEST_STORE_URL": self.store_url, "DG_TEST_BROKER_URL": self.broker_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }  # fmt: skip
        command = [
            str(Path(sys.executable).with_name("celery")), "-A", "tests.services.omni", "worker",
            "--pool=threads", "--concurrency=16", "-n", f"omni-{uuid.uuid4().hex[:6]}@%h",
            "--prefetch-multiplier=1", "--disable-prefetch", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--loglevel=WARNING",
        ]  # fmt: skip
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        wanted = {f"datagraph.{p.name}" for p in xp.ALL}
        store = redis.Redis.from_url(self.store_url, decode_responses=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"the omni worker exited:\n{log.read_text(errors='replace')[-4000:]}")
                alive: Any = store.zrangebyscore(keys.WORKERS, time.time() - 5, "+inf")
                for worker_id in alive:
                    fields: Any = store.hgetall(keys.worker(worker_id))
                    queues = set(json.loads(fields.get("queues", "[]")))
                    if fields.get("pid") == str(self.process.pid) and wanted <= queues:
                        return
                time.sleep(0.1)
        finally:
            store.close()
        pytest.fail(f"the omni worker did not come up:\n{log.read_text(errors='replace')[-4000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture(scope="module")
def omni(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryService]:
    service = CeleryService(valkey_url, valkey_url.rsplit("/", 1)[0] + "/1", tmp_path_factory.mktemp("omni"))
    try:
        yield service
    finally:
        service.kill()


# -- one supervisor per test, on the executor under test -------------------------------


@pytest.fixture(params=EXECUTORS)
def executor_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def executor(executor_kind: str, anyio_backend: str, request: pytest.FixtureRequest) -> Iterator[Executor]:
    if executor_kind == "local":
        yield LocalExecutor()
    elif executor_kind == "process":
        yield ProcessExecutor(max_workers=2)
    elif executor_kind == "subprocess":
        yield SubprocessExecutor()
    else:
        from celery import Celery

        from datagraph.executors import CeleryExecutor

        service: CeleryService = request.getfixturevalue("omni")
        service.ensure()
        app = Celery("caller", broker=service.broker_url)
        yield CeleryExecutor(app, worker_grace=5.0)
        app.close()


@pytest.fixture
async def caller(executor: Executor, valkey_url: str) -> AsyncIterator[Supervisor]:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, executor=executor, secret=SECRET)
    try:
        yield supervisor
    finally:
        await Supervisor.adetach()


async def _stats(supervisor: Supervisor, run_id: str) -> dict[str, str]:
    runtime = await supervisor.runtime()
    raw = await runtime.client.custom_command(["HGETALL", keys.stats(run_id)])
    return {k.decode(): v.decode() for k, v in raw.items()}


def _pid(worker_id: str) -> int:
    return int(worker_id.split(":")[1])


# -- the suite ----------------------------------------------------------------------------


async def test_the_seed_example(caller: Supervisor, executor_kind: str) -> None:
    out = await caller.start_flow(Flow.from_processors(xp.foobar).resolve(), [IOVal("foo", 5)])
    assert [v async for v in out["bar"].stream()] == [0, 2, 4, 6, 8]
    run_id = out["bar"].run_id
    assert await caller.wait(run_id, timeout=10) == "succeeded"
    stats = await _stats(caller, run_id)
    assert stats["state:x_foobar"] == "done"
    # Where it ran: in this process, or in a worker process of the executor's.
    in_here = _pid(stats["worker:x_foobar"]) == os.getpid()
    assert in_here is (executor_kind == "local")
    if executor_kind == "process":
        assert _pid(stats["worker:x_foobar"]) in caller.executor.pids()  # type: ignore[attr-defined]


async def test_fan_out_and_fan_in(caller: Supervisor) -> None:
    flow = Flow.from_processors(xp.source, xp.square, xp.negate, xp.pair).resolve()
    out = await caller.start_flow(flow, [IOVal("n", 200)])
    assert await out["pairs"].collect() == [(i * i, -i) for i in range(200)]
    assert await caller.wait(out["pairs"].run_id, timeout=10) == "succeeded"


async def test_a_wait_processor_starts_once_its_input_is_complete(caller: Supervisor) -> None:
    flow = Flow.from_processors(xp.slow, xp.total).resolve()
    assert flow.topology.partitions == {"x_slow": 0, "x_total": 1}
    out = await caller.start_flow(flow, [IOVal("count", 20)])
    total, started = await out["total"].first()
    assert total == sum(range(20))
    assert started >= await out["slow_done"].first()


async def test_a_failure_reaches_the_caller_naming_the_processor(caller: Supervisor) -> None:
    out = await caller.start_flow(Flow.from_processors(xp.faulty, xp.relay).resolve(), [IOVal("k", 7)])
    got: list[int] = []
    with anyio.fail_after(30), pytest.raises(ProcessorFailed) as info:
        async for value in out["relayed"].stream():
            got.append(value)
    assert got == list(range(7))  # what came before the failure is passed on
    assert info.value.processor == "x_faulty"
    assert info.value.error_type == "ValueError"
    assert "x_faulty gave up after 7 values" in str(info.value)
    assert await caller.wait(out["relayed"].run_id, timeout=10) == "failed"


async def test_backpressure_holds_a_fast_producer_to_its_reader(caller: Supervisor) -> None:
    """x_eager may lead x_sluggish (10 ms a value) by its max_backlog, plus what is in flight."""
    n = 60
    out = await caller.start_flow(Flow.from_processors(xp.eager, xp.sluggish).resolve(), [IOVal("m", n)])
    seen = await out["seen"].collect()
    assert [i for i, _, _ in seen] == list(range(n))
    produced = {i: at for i, at, _ in seen}
    consumed = {i: at for i, _, at in seen}
    # Unchecked, all 60 would be produced at once, before the reader took the 10th.
    lead = 4 * xp.BACKLOG
    late = [i for i in range(lead, n) if produced[i] < consumed[i - lead]]
    assert not late, f"values produced more than {lead} ahead of their reader: {late}"


async def test_cancel_stops_the_processor_where_it_runs(caller: Supervisor) -> None:
    out = await caller.start_flow(Flow.from_processors(xp.ticker).resolve(), [IOVal("period", 0.01)])
    run_id = out["ticks"].run_id
    with pytest.raises(RunCancelled), anyio.fail_after(30):
        async for value in out["ticks"].stream():
            if value == 3:
                assert await caller.cancel(run_id) is True
    assert await caller.wait(run_id, timeout=5) == "cancelled"
    # The processor itself stopped (in its worker), and recorded it.
    with anyio.fail_after(10):
        while True:
            if (await _stats(caller, run_id)).get("state:x_ticker") == "cancelled":
                break
            await anyio.sleep(0.05)


@pytest.mark.parametrize("executor_kind", ["process", "subprocess", CELERY])
async def test_a_killed_worker_fails_the_run_naming_the_processor(
    caller: Supervisor, executor_kind: str, anyio_backend: str, request: pytest.FixtureRequest
) -> None:
    """kill -9 of the worker process running x_ticker: the caller's reader raises, naming it.

    (LocalExecutor runs processors in the caller: there is no worker to kill.)
    """
    out = await caller.start_flow(Flow.from_processors(xp.ticker).resolve(), [IOVal("period", 0.02)])
    pid, backend = await out["where"].first()
    assert pid != os.getpid()
    if executor_kind == "process":
        assert pid in caller.executor.pids()  # type: ignore[attr-defined]
        assert backend == anyio_backend  # the worker's loop runs the caller's backend
    killed_at = 0.0
    with anyio.fail_after(60), pytest.raises(ProcessorFailed) as info:
        async for value in out["ticks"].stream():
            if value == 5:
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
    latency = time.monotonic() - killed_at
    print(f"{executor_kind}: kill -9 -> ProcessorFailed in {latency:.2f}s")
    assert latency < KILL_DEADLINE
    assert info.value.processor == "x_ticker"
    assert info.value.error_type == "WorkerLost"
    assert f":{pid}:" in str(info.value.worker)
    if executor_kind == "process":  # its pool saw the death itself, and how it died
        assert "was killed by SIGKILL" in str(info.value)
    assert await caller.wait(out["ticks"].run_id, timeout=10) == "failed"
