"""The CeleryExecutor end to end: real ``celery worker`` processes, Valkey as broker and store.

Two services with disjoint processors (``tests/services/alpha.py`` on a prefork
pool and the Trio backend, ``tests/services/beta.py`` on a threads pool and
asyncio) run for the whole module; this process only declares the processor
specs (``tests/services/specs.py``) and starts flows, on asyncio and Trio.
Workers of a third service, ``gamma``, are started per test to be killed or
starved of pool slots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from celery import Celery

from datagraph import IO, Flow, IOVal, LocalExecutor, Supervisor
from datagraph.exceptions import ProcessorFailed, UnknownProcessorError
from datagraph.executors import CeleryExecutor
from datagraph.executors import celery as celery_executor
from datagraph.plan import Plan
from datagraph.processor import Processor, registry
from datagraph.store import keys
from tests.services import specs

pytestmark = pytest.mark.celery

ROOT = Path(__file__).resolve().parents[1]
CELERY = Path(sys.executable).with_name("celery")
SECRET = b"celery-test-secret"  # the services' (tests/services/_service.py)
#: What a service's worker needs (docs/celery.md), plus faster start-up for tests.
WORKER_OPTIONS = [
    "--prefetch-multiplier=1", "--disable-prefetch",
    "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO",
]
#: Kill -9 to the caller's error, with default settings (lease 5 s, reads block 1 s).
KILL_DEADLINE = 10.0


@dataclass
class Worker:
    """A ``celery worker`` subprocess in a process group of its own."""

    service: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_worker(
    service: str, pool: str, concurrency: int, urls: tuple[str, str], logs: Path,
    *, options: Sequence[str] = (), env: Mapping[str, str] | None = None,
) -> Worker:
    store_url, broker_url = urls
    log = logs / f"{service}-{uuid.uuid4().hex[:6]}.log"
    env = {
        **os.environ,
        **(env or {}),
        "DG_TEST_STORE_URL": store_url,
        "DG_TEST_BROKER_URL": broker_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        str(CELERY), "-A", f"tests.services.{service}", "worker", f"--pool={pool}",
        f"--concurrency={concurrency}", "-n", f"{service}-{uuid.uuid4().hex[:6]}@%h",
        *WORKER_OPTIONS, *options,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return Worker(service, process, log)


def _die_with_parent() -> None:
    """In the worker before exec: a cold shutdown (SIGQUIT) if this test process is killed.

    Fixture teardown kills the workers; this covers a test run killed before it.
    """
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGQUIT)


def live_workers(store: redis.Redis, lease: float = 5.0) -> dict[str, dict[str, Any]]:
    """Live workers' heartbeat hashes, read directly (not through datagraph)."""
    alive: Any = store.zrangebyscore(keys.WORKERS, time.time() - lease, "+inf")
    out = {}
    for worker_id in alive:
        fields: Any = store.hgetall(keys.worker(worker_id))
        if fields:
            out[str(worker_id)] = dict(fields)
    return out


def wait_for_queues(store: redis.Redis, workers: list[Worker], processors: list[Processor],
                    slots: int, timeout: float = 60.0) -> None:
    """Wait until live workers consume every processor's queue with ``slots`` processes beating."""
    wanted = {CeleryExecutor.queue_name(p.name) for p in processors}
    pids = {str(w.process.pid) for w in workers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.process.poll() is not None:
                pytest.fail(f"worker {worker.service} exited:\n{worker.output()}")
        live = live_workers(store)
        served = {q for f in live.values() for q in json.loads(f["queues"])}
        ours = [f for f in live.values() if f["pid"] in pids or _parent(f["pid"]) in pids]
        if wanted <= served and len(ours) >= slots:
            return
        time.sleep(0.1)
    pytest.fail("workers did not come up:\n" + "\n".join(w.output() for w in workers))


async def poll_until(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Poll the store until ``check()`` holds; fail after ``seconds``."""
    with anyio.fail_after(seconds):
        while True:
            if await check():
                return
            await anyio.sleep(0.05)


def _parent(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1]
    except (OSError, IndexError):
        return ""


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


@pytest.fixture(scope="module")
def services(
    urls: tuple[str, str], store: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Worker]]:
    """alpha (prefork, 3 processes) and beta (threads, 8): started once, killed at the end."""
    logs = tmp_path_factory.mktemp("celery-logs")
    workers = {
        "alpha": start_worker("alpha", "prefork", 3, urls, logs),
        "beta": start_worker("beta", "threads", 8, urls, logs),
    }
    try:
        # 3 alpha pool processes + the beta process beat.
        wait_for_queues(store, list(workers.values()), [*specs.ALPHA, *specs.BETA], slots=4)
        yield workers
    finally:
        for worker in workers.values():
            worker.kill()


@pytest.fixture
def gamma(
    urls: tuple[str, str], store: redis.Redis, tmp_path: Path
) -> Iterator[Callable[[int], Worker]]:
    """Start a fresh gamma worker (threads pool, ``concurrency`` slots); killed afterwards."""
    started: list[Worker] = []

    def start(concurrency: int) -> Worker:
        worker = start_worker("gamma", "threads", concurrency, urls, tmp_path)
        started.append(worker)
        wait_for_queues(store, [worker], list(specs.GAMMA), slots=1)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.kill()


@asynccontextmanager
async def attach_caller(urls: tuple[str, str], **settings: Any) -> AsyncIterator[Supervisor]:
    """A caller that implements none of the processors: it only declares their specs."""
    store_url, broker_url = urls
    Supervisor.detach()
    app = Celery("caller", broker=broker_url)
    supervisor = Supervisor.attach(
        redis_config={"url": store_url},
        executor=CeleryExecutor(app, worker_grace=1.0),
        secret=SECRET,
        **settings,
    )
    try:
        yield supervisor
    finally:
        await Supervisor.adetach()
        await anyio.to_thread.run_sync(app.close)


@pytest.fixture
async def caller(
    services: dict[str, Worker], urls: tuple[str, str], anyio_backend: str
) -> AsyncIterator[Supervisor]:
    async with attach_caller(urls) as supervisor:
        yield supervisor


async def _stats(supervisor: Supervisor, run_id: str) -> dict[str, str]:
    runtime = await supervisor.runtime()
    raw = await runtime.client.custom_command(["HGETALL", keys.stats(run_id)])
    return {k.decode(): v.decode() for k, v in raw.items()}


async def _worker_pid(supervisor: Supervisor, worker_id: str) -> int:
    runtime = await supervisor.runtime()
    return int(await runtime.client.custom_command(["HGET", keys.worker(worker_id), "pid"]))


# -- flows across services ---------------------------------------------------------


@pytest.mark.anyio
async def test_flow_spans_two_services_from_a_caller_with_no_implementations(
    caller: Supervisor, services: dict[str, Worker]
) -> None:
    assert all(p.implementation is None for p in [*specs.ALPHA, *specs.BETA])
    assert registry.get("c_nums") is None and registry.get("c_pair") is None
    flow = Flow.from_processors(specs.nums, specs.pair).resolve()  # zip via stream_with
    out = await caller.start_flow(flow, [IOVal("n", 5)])
    assert await out["sum"].collect() == [0, 101, 202, 303, 404]
    assert await caller.wait(out["sum"].run_id, timeout=10) == "succeeded"
    stats = await _stats(caller, out["sum"].run_id)
    assert stats["state:c_nums"] == stats["state:c_pair"] == "done"
    alpha_pid = await _worker_pid(caller, stats["worker:c_nums"])
    beta_pid = await _worker_pid(caller, stats["worker:c_pair"])
    assert _parent(str(alpha_pid)) == str(services["alpha"].process.pid)  # a prefork child
    assert beta_pid == services["beta"].process.pid
    assert os.getpid() not in (alpha_pid, beta_pid)


@pytest.mark.anyio
async def test_processor_with_two_outputs(caller: Supervisor) -> None:
    out = await caller.start_flow(Flow.from_processors(specs.split).resolve(), [IOVal("n", 10)])
    assert await out["even"].collect() == [0, 2, 4, 6, 8]
    assert await out["odd"].collect() == [1, 3, 5, 7, 9]


@pytest.mark.anyio
async def test_three_processor_fan_in_across_services(caller: Supervisor) -> None:
    flow = Flow.from_processors(specs.left, specs.right, specs.join).resolve()
    out = await caller.start_flow(flow, [IOVal("n", 50)])
    got = await out["both"].collect()
    assert sorted(got) == sorted([f"l{i}" for i in range(50)] + [f"r{i}" for i in range(50)])
    assert [v for v in got if v[0] == "l"] == [f"l{i}" for i in range(50)]
    assert [v for v in got if v[0] == "r"] == [f"r{i}" for i in range(50)]


@pytest.mark.anyio
async def test_consumer_interleaves_with_producer_across_services(caller: Supervisor) -> None:
    """The consumer (beta) handles item i before the producer (alpha) emits item i+1."""
    tag = uuid.uuid4().hex
    flow = Flow.from_processors(specs.prod, specs.cons).resolve()
    out = await caller.start_flow(flow, [IOVal("job", {"n": 5, "tag": tag})])
    assert await out["done"].collect() == [0, 1, 2, 3, 4]
    runtime = await caller.runtime()
    events = await runtime.client.custom_command(["LRANGE", f"dgtest:{tag}", "0", "-1"])
    await runtime.client.custom_command(["DEL", f"dgtest:{tag}"])
    expected = [f"{kind} {i}" for i in range(5) for kind in ("produce", "consume")]
    assert [e.decode() for e in events] == expected


@pytest.mark.anyio
async def test_wait_processor_starts_after_its_input_completes(caller: Supervisor) -> None:
    tag = uuid.uuid4().hex
    flow = Flow.from_processors(specs.slow, specs.total).resolve()
    assert flow.topology.partitions == {"c_slow": 0, "c_total": 1}
    out = await caller.start_flow(flow, [IOVal("job", {"n": 10, "tag": tag})])
    assert await out["sum"].first() == 45
    runtime = await caller.runtime()
    produced = await runtime.client.custom_command(["LRANGE", f"dgtest:{tag}:produced", "0", "-1"])
    started = await runtime.client.custom_command(["LRANGE", f"dgtest:{tag}:started", "0", "-1"])
    await runtime.client.custom_command(["DEL", f"dgtest:{tag}:produced", f"dgtest:{tag}:started"])
    assert float(started[0]) >= float(produced[0])


@pytest.mark.anyio
async def test_a_processor_downstream_of_a_failure_passes_on_what_came_before_it(caller: Supervisor) -> None:
    """The failure reaches the caller through the slow downstream processor, not as a cancel.

    c_faulty (alpha) yields 20 values and raises at once; c_drain (beta) needs
    about 2 s to pass them on, longer than its worker takes to notice that the
    run has failed. It must not be stopped for that: it reads on to the failure.
    """
    flow = Flow.from_processors(specs.faulty, specs.drain).resolve()
    out = await caller.start_flow(flow, [IOVal("n", 20)])
    got: list[int] = []
    with anyio.fail_after(30), pytest.raises(ProcessorFailed, match="c_faulty gave up") as info:
        async for value in out["drained"].stream():
            got.append(value)
    assert got == list(range(20))
    assert info.value.processor == "c_faulty"
    assert await caller.wait(out["drained"].run_id, timeout=10) == "failed"


# The worker side of a task that arrives after its run has failed, run in this process:
# which processors of the run a worker then starts is what the Celery task decides.
late_boom = Processor("c_late_boom", ["late_n"], ["late_bx"])
late_after = Processor("c_late_after", ["late_bx"], ["late_out"])  # downstream of the failure
late_other = Processor("c_late_other", ["late_n"], ["late_o"])  # beside it


@late_boom
async def _late_boom(late_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await late_n.first()):
        yield IOVal("late_bx", i)
    raise RuntimeError("c_late_boom failed before the others started")


@late_after
async def _late_after(late_bx: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for i in late_bx.stream():
        yield IOVal("late_out", i)


@late_other
async def _late_other(late_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    yield IOVal("late_o", await late_n.first())


class HoldBack(LocalExecutor):
    """Starts only the processors not named: the others' "tasks" are delivered by the test."""

    def __init__(self, *held: str) -> None:
        self.held = set(held)

    async def dispatch(self, supervisor: Supervisor, plan: Plan, processor: Processor) -> None:
        if processor.name not in self.held:
            await super().dispatch(supervisor, plan, processor)


@pytest.mark.anyio
async def test_a_task_arriving_after_its_run_failed_passes_the_failure_on(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=HoldBack("c_late_after", "c_late_other"), secret=SECRET
    )
    try:
        flow = Flow.from_processors(late_boom, late_after, late_other).resolve()
        out = await supervisor.start_flow(flow, [IOVal("late_n", 3)])
        run_id = out["late_out"].run_id
        assert await supervisor.wait(run_id, timeout=10) == "failed"

        # Beside the failure: not started, but its readers learn why at once.
        await celery_executor._execute(run_id, "c_late_other")
        with anyio.fail_after(5), pytest.raises(ProcessorFailed, match="before the others") as info:
            await out["late_o"].collect()
        assert info.value.processor == "c_late_boom"

        # Downstream of it: started all the same, it passes on what came before the failure.
        await celery_executor._execute(run_id, "c_late_after")
        got: list[int] = []
        with anyio.fail_after(5), pytest.raises(ProcessorFailed, match="before the others") as info:
            async for value in out["late_out"].stream():
                got.append(value)
        assert got == [0, 1, 2]
        assert info.value.processor == "c_late_boom"
        stats = await _stats(supervisor, run_id)
        assert stats["state:c_late_other"] == stats["state:c_late_after"] == "failed"
    finally:
        await Supervisor.adetach()


def test_workers_heartbeat_with_what_they_serve(services: dict[str, Worker], store: redis.Redis) -> None:
    live = live_workers(store)
    alpha = [f for f in live.values() if _parent(f["pid"]) == str(services["alpha"].process.pid)]
    beta = [f for f in live.values() if f["pid"] == str(services["beta"].process.pid)]
    assert len(alpha) == 3 and len(beta) == 1  # every prefork pool process is a worker
    for fields in [*alpha, *beta]:
        assert fields["executor"] == "celery"
        assert {"host", "pid", "started", "last_beat", "processors", "queues"} <= set(fields)
    assert json.loads(alpha[0]["processors"]) == sorted(p.name for p in specs.ALPHA)
    assert json.loads(beta[0]["queues"]) == sorted(f"datagraph.{p.name}" for p in specs.BETA)


# -- what goes wrong -------------------------------------------------------------------


@pytest.mark.anyio
async def test_unknown_processor_fails_fast_naming_it(caller: Supervisor) -> None:
    nobody = Processor("c_nobody_implements_this", ["l"], ["x"])
    flow = Flow.from_processors(specs.left, nobody).resolve()
    started = time.monotonic()
    with pytest.raises(UnknownProcessorError, match="'c_nobody_implements_this'") as info:
        await caller.start_flow(flow, [IOVal("n", 1)])
    assert time.monotonic() - started < 5  # worker_grace=1 s
    assert "c_left" not in str(info.value).split("live workers implement")[0]


@pytest.mark.anyio
@pytest.mark.parametrize("reader", ["caller", "downstream"])
async def test_sigkill_of_worker_running_a_streaming_processor_fails_the_reader(
    caller: Supervisor, services: dict[str, Worker], reader: str
) -> None:
    """kill -9 of the prefork process running c_ticker: the caller's stream() raises, naming it.

    ``caller``: the caller reads c_ticker's output itself; ``downstream``: it
    reads c_echo's (in beta), whose reader notices and fails with c_ticker's error.
    """
    procs = [specs.ticker] if reader == "caller" else [specs.ticker, specs.echo]
    out = await caller.start_flow(Flow.from_processors(*procs).resolve(), [IOVal("n", 0.05)])
    io = out["ticks" if reader == "caller" else "echoed"]
    values: list[int] = []
    killed_at = 0.0
    worker_id = ""
    with anyio.fail_after(60), pytest.raises(ProcessorFailed) as info:
        async for value in io.stream():
            values.append(value)
            if len(values) == 5:
                worker_id = (await _stats(caller, io.run_id))["worker:c_ticker"]
                pid = await _worker_pid(caller, worker_id)
                assert _parent(str(pid)) == str(services["alpha"].process.pid)
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
    latency = time.monotonic() - killed_at
    print(f"kill -9 -> ProcessorFailed in {latency:.2f}s ({reader})")
    assert latency < KILL_DEADLINE
    assert values[:5] == [0, 1, 2, 3, 4]
    error = info.value
    assert error.processor == "c_ticker"
    assert error.error_type == "WorkerLost"
    assert "'c_ticker'" in str(error) and worker_id in str(error)
    assert await caller.wait(io.run_id, timeout=10) == "failed"


@pytest.mark.anyio
async def test_sigkill_of_a_whole_worker_fails_the_run(
    gamma: Callable[[int], Worker], urls: tuple[str, str], anyio_backend: str
) -> None:
    """The whole worker (threads pool: one process) dies, as when its machine goes away."""
    worker = gamma(4)
    async with attach_caller(urls) as caller:
        out = await caller.start_flow(Flow.from_processors(specs.g_ticker).resolve(), [IOVal("n", 0.05)])
        killed_at = 0.0
        with anyio.fail_after(60), pytest.raises(ProcessorFailed) as info:
            async for value in out["g_ticks"].stream():
                if value == 5:
                    worker.kill()
                    killed_at = time.monotonic()
        latency = time.monotonic() - killed_at
        print(f"kill -9 of the worker's process group -> ProcessorFailed in {latency:.2f}s")
        assert latency < KILL_DEADLINE
        assert info.value.processor == "g_ticker"
        assert info.value.worker is not None
        assert f":{worker.process.pid}:" in info.value.worker


@pytest.mark.anyio
async def test_flow_needing_more_slots_than_workers_have_fails_naming_the_processor(
    gamma: Callable[[int], Worker], urls: tuple[str, str], anyio_backend: str
) -> None:
    """Two streaming processors, one slot: the second is never started and the run fails."""
    gamma(1)
    async with attach_caller(urls, dispatch_timeout=3.0) as caller:
        flow = Flow.from_processors(specs.g_source, specs.g_sink).resolve()
        started = time.monotonic()
        out = await caller.start_flow(flow, [IOVal("n", 0.05)])
        with anyio.fail_after(30), pytest.raises(ProcessorFailed) as info:
            await out["g_out"].collect()
        assert 3.0 <= time.monotonic() - started < 3.0 + KILL_DEADLINE, info.value
        assert info.value.processor == "g_sink"
        assert info.value.error_type == "DispatchTimeout"
        assert "slot" in str(info.value)
        # The processor that did get the slot is stopped, so the slot is free again.
        async def source_stopped() -> bool:
            return (await _stats(caller, out["g_out"].run_id))["state:g_source"] != "running"

        await poll_until(source_stopped, seconds=10)


# -- packaging ---------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def test_importing_datagraph_does_not_import_celery() -> None:
    result = _python("import sys, datagraph, datagraph.executors; print('celery' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_celery_executor_without_celery_says_how_to_install() -> None:
    result = _python(
        "import sys; sys.modules['celery'] = None\n"
        "from datagraph.executors import CeleryExecutor"
    )
    assert result.returncode != 0
    assert 'pip install "datagraph[celery]"' in result.stderr


@pytest.mark.anyio
async def test_history_of_a_run_across_two_workers_is_one_series_per_edge(caller: Supervisor) -> None:
    """c_ticker runs in alpha, c_echo in beta: both sample the run, the store keeps one series."""
    from datagraph.telemetry import Telemetry

    flow = Flow.from_processors(specs.ticker, specs.echo).resolve()
    out = await caller.start_flow(flow, [IOVal("n", 0.01)])
    run_id = out["echoed"].run_id
    started = time.monotonic()
    with anyio.fail_after(60):
        async for value in out["echoed"].stream():
            if value >= 200 and time.monotonic() - started >= 3.5:
                break
    stats = await _stats(caller, run_id)
    assert stats["worker:c_ticker"] != stats["worker:c_echo"]
    telemetry = await Telemetry.from_supervisor(caller)
    history = await telemetry.history(run_id)
    await caller.cancel(run_id)
    assert history is not None
    assert [(e.io, e.source, e.target) for e in history.edges] == [
        ("n", "(input)", "c_ticker"), ("ticks", "c_ticker", "c_echo"), ("echoed", "c_echo", "(output)"),
    ]
    ticks = history.edge("ticks", "c_echo")
    # Written by one worker, read by the other, in the same samples.
    assert ticks.written[-1] >= 150 and ticks.read[-1] >= 150
    assert list(ticks.written) == sorted(ticks.written) and list(ticks.read) == sorted(ticks.read)
    # About one sample a second, not one per worker per second.
    span = history.t[-1] - history.t[0]
    assert 3 <= len(history.t) <= span + 3, (len(history.t), span)
    # Each worker's time split is in the series (c_ticker's sleeps count as busy: they are its own work).
    assert any(b > 0.5 for b in history.processor("c_ticker").busy)
    assert any(i > 0.5 for i in history.processor("c_echo").idle)
