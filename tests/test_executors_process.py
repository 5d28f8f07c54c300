"""ProcessExecutor's own promises: its pool, what it refuses, and that no worker outlives it.

What every executor does (streams, failures, backpressure, cancel, a killed
worker) is in the executor-agnostic suite, ``tests/test_executors.py``.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.exceptions import ConfigError, ProcessorError, ProcessorFailed, UnknownProcessorError
from datagraph.executors import ProcessExecutor
from datagraph.liveness import live_workers
from datagraph.store import keys
from tests import executor_processors as xp

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"process-test-secret"
#: How long a worker may take to exit once its caller is gone.
EXIT_DEADLINE = 15.0


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], seconds: float = EXIT_DEADLINE) -> list[int]:
    """Poll until none of ``pids`` is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


@pytest.fixture
async def pool_caller(valkey_url: str, anyio_backend: str) -> AsyncIterator[Supervisor]:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=ProcessExecutor(max_workers=2), secret=SECRET
    )
    try:
        yield supervisor
    finally:
        pids = supervisor.executor.pids()  # type: ignore[attr-defined]
        await Supervisor.adetach()
        assert wait_gone(pids, 0.1) == [], "a worker outlived its supervisor"


def _executor(supervisor: Supervisor) -> ProcessExecutor:
    executor = supervisor.executor
    assert isinstance(executor, ProcessExecutor)
    return executor


# -- the pool ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.stores  # workers find a Valkey Cluster from the caller's address too
async def test_the_pool_starts_at_the_first_run_and_serves_the_next(pool_caller: Supervisor) -> None:
    executor = _executor(pool_caller)
    assert executor.pids() == []  # nothing started by attach()
    flow = Flow.from_processors(xp.foobar).resolve()
    out = await pool_caller.start_flow(flow, [IOVal("foo", 3)])
    assert await out["bar"].collect() == [0, 2, 4]
    pids = executor.pids()
    assert len(pids) == 2 and os.getpid() not in pids
    out = await pool_caller.start_flow(flow, [IOVal("foo", 4)])
    assert await out["bar"].collect() == [0, 2, 4, 6]
    assert executor.pids() == pids  # the same processes


@pytest.mark.anyio
async def test_processors_of_a_run_spread_over_the_workers(pool_caller: Supervisor) -> None:
    flow = Flow.from_processors(xp.crunch_a, xp.crunch_b).resolve()
    out = await pool_caller.start_flow(flow, [IOVal("work", (200, 100))], all_outputs=True)
    pid_a, pid_b = await out["pid_a"].first(), await out["pid_b"].first()
    assert pid_a != pid_b
    assert {pid_a, pid_b} == set(_executor(pool_caller).pids())
    assert await out["crunched_a"].collect() == [xp.spin(i, 100) for i in range(200)]


@pytest.mark.anyio
async def test_workers_heartbeat_as_process_workers_with_what_they_implement(
    pool_caller: Supervisor,
) -> None:
    await _executor(pool_caller).start(pool_caller)
    pids = set(_executor(pool_caller).pids())
    runtime = await pool_caller.runtime()
    workers = [w for w in await live_workers(runtime) if int(w.id.split(":")[1]) in pids]
    assert len(workers) == 2
    assert {w.executor for w in workers} == {"process"}
    # A worker publishes what it implements once it has imported the module: run something.
    out = await pool_caller.start_flow(Flow.from_processors(xp.source).resolve(), [IOVal("n", 1)])
    assert await out["xs"].collect() == [0]
    with anyio.fail_after(10):
        while True:
            workers = [w for w in await live_workers(runtime) if int(w.id.split(":")[1]) in pids]
            if any("x_source" in w.processors for w in workers):
                break
            await anyio.sleep(0.1)


@pytest.mark.anyio
async def test_a_killed_worker_is_replaced_at_the_next_run(pool_caller: Supervisor) -> None:
    executor = _executor(pool_caller)
    await executor.start(pool_caller)
    victim = executor.pids()[0]
    os.kill(victim, signal.SIGKILL)
    with anyio.fail_after(10):
        while True:
            if victim not in executor.pids():
                break
            await anyio.sleep(0.02)
    out = await pool_caller.start_flow(Flow.from_processors(xp.foobar).resolve(), [IOVal("foo", 2)])
    assert await out["bar"].collect() == [0, 2]
    assert len(executor.pids()) == 2 and victim not in executor.pids()


@pytest.mark.anyio
async def test_many_runs_at_once_share_the_pool(pool_caller: Supervisor) -> None:
    flow = Flow.from_processors(xp.source, xp.square, xp.negate, xp.pair).resolve()
    results: dict[int, list[tuple[int, int]]] = {}

    async def one(n: int) -> None:
        out = await pool_caller.start_flow(flow, [IOVal("n", n)])
        results[n] = await out["pairs"].collect()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(10, 20):
                tg.start_soon(one, n)
    assert results == {n: [(i * i, -i) for i in range(n)] for n in range(10, 20)}
    assert len(_executor(pool_caller).pids()) == 2


@pytest.mark.anyio
async def test_workers_import_from_the_callers_sys_path(
    pool_caller: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module found only through a sys.path entry the caller added at run time."""
    module = f"dg_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(
        f"""
        from datagraph import IO, IOVal, Processor

        shout = Processor("{module}_shout", ["words"], ["loud"])

        @shout
        async def _shout(words: IO[str]):
            async for word in words:
                yield IOVal("loud", word.upper())
        """
    ))  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = importlib.import_module(module)
    out = await pool_caller.start_flow(Flow.from_processors(plugin.shout).resolve(), [IOVal("words", "hi")])
    assert await out["loud"].collect() == ["HI"]


@pytest.mark.anyio
async def test_workers_share_an_embedded_stores_generated_secret(anyio_backend: str) -> None:
    """No redis_config, no secret: the workers reach the embedded Valkey and sign with its key."""
    Supervisor.detach()
    executor = ProcessExecutor(max_workers=1)
    supervisor = Supervisor.attach(executor=executor)
    try:
        assert supervisor.embedded_url is not None and supervisor.settings.secret is None
        out = await supervisor.start_flow(Flow.from_processors(xp.foobar).resolve(), [IOVal("foo", 3)])
        assert await out["bar"].collect() == [0, 2, 4]
        # The run's record follows the end of its stream by a few commands of the same flush.
        assert await supervisor.wait(out["bar"].run_id, timeout=10) == "succeeded"
    finally:
        await Supervisor.adetach()


@pytest.mark.anyio
async def test_sync_detach_stops_the_workers(valkey_url: str, anyio_backend: str) -> None:
    Supervisor.detach()
    executor = ProcessExecutor(max_workers=1)
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, executor=executor, secret=SECRET)
    out = await supervisor.start_flow(Flow.from_processors(xp.foobar).resolve(), [IOVal("foo", 1)])
    assert await out["bar"].collect() == [0]
    pids = executor.pids()
    assert len(pids) == 1
    Supervisor.detach()
    assert wait_gone(pids, 0.1) == []


# -- what it refuses -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_processor_defined_in_a_function_is_refused_naming_it(pool_caller: Supervisor) -> None:
    inner = Processor("x_inner", ["i"], ["o"])

    @inner
    async def _inner(i: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("o", await i.first())

    with pytest.raises(ProcessorError, match=r"'x_inner'.*inside a function.*top level"):
        await pool_caller.start_flow(Flow.from_processors(inner).resolve(), [IOVal("i", 1)])
    assert _executor(pool_caller).pids() == []  # refused before anything started


@pytest.mark.anyio
async def test_a_processor_defined_in_main_is_refused_naming_it(pool_caller: Supervisor) -> None:
    in_main = Processor("x_in_main", ["i"], ["o"])

    async def _in_main(i: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("o", await i.first())

    _in_main.__module__ = "__main__"
    _in_main.__qualname__ = "_in_main"
    in_main(_in_main)
    with pytest.raises(ProcessorError, match=r"'x_in_main'.*__main__.*module of its own"):
        await pool_caller.start_flow(Flow.from_processors(in_main).resolve(), [IOVal("i", 1)])


@pytest.mark.anyio
async def test_a_processor_not_implemented_here_is_refused(pool_caller: Supervisor) -> None:
    spec_only = Processor("x_spec_only", ["i"], ["o"])
    with pytest.raises(UnknownProcessorError, match=r"'x_spec_only'.*import that module"):
        await pool_caller.start_flow(Flow.from_processors(spec_only).resolve(), [IOVal("i", 1)])


@pytest.mark.anyio
async def test_a_module_a_worker_cannot_import_fails_the_run_naming_it(pool_caller: Supervisor) -> None:
    from tests import executor_unimportable

    flow = Flow.from_processors(executor_unimportable.licensed).resolve()
    out = await pool_caller.start_flow(flow, [IOVal("lic_in", 1)])
    with anyio.fail_after(30), pytest.raises(ProcessorFailed) as info:
        await out["lic_out"].collect()
    assert info.value.processor == "x_licensed"
    assert info.value.error_type == "ImportError"
    assert "tests.executor_unimportable" in str(info.value)
    assert "licence server" in str(info.value)


@pytest.mark.anyio
async def test_a_pool_that_cannot_start_fails_start_flow_before_the_run_is_recorded(
    valkey_url: str, anyio_backend: str
) -> None:
    Supervisor.detach()
    executor = ProcessExecutor(max_workers=1, start_timeout=0.001)
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, executor=executor, secret=SECRET)
    try:
        runtime = await supervisor.runtime()
        runs_before = await runtime.client.custom_command(["ZCARD", keys.RUNS])
        with pytest.raises(ConfigError, match=r"could not start.*start_timeout \(0.001s\)"):
            await supervisor.start_flow(Flow.from_processors(xp.foobar).resolve(), [IOVal("foo", 1)])
        assert await runtime.client.custom_command(["ZCARD", keys.RUNS]) == runs_before
        assert executor.pids() == []  # the worker that was late was stopped
    finally:
        await Supervisor.adetach()


def test_the_executors_package_exports_the_protocol() -> None:
    import datagraph.executors

    assert sorted(datagraph.executors.__all__) == sorted([
        "CeleryExecutor", "Executor", "LocalExecutor", "ProcessExecutor",
        "fail_dispatch", "record_dispatch", "run_dispatched",
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_workers": 0}, "max_workers must be a positive int, got 0"),
        ({"max_workers": 1.5}, "max_workers must be a positive int"),
        ({"backend": "curio"}, "backend must be 'asyncio' or 'trio', got 'curio'"),
        ({"start_timeout": 0}, "start_timeout must be positive"),
    ],
)
def test_bad_options_are_refused_naming_them(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProcessExecutor(**options)  # type: ignore[arg-type]


def test_the_default_size_is_the_cpu_count() -> None:
    assert ProcessExecutor().max_workers == len(os.sched_getaffinity(0))


# -- no worker outlives its caller -----------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import sys

    import anyio

    from datagraph import Flow, IOVal, Supervisor
    from datagraph.executors import ProcessExecutor
    from tests import executor_processors as xp


    async def main() -> None:
        executor = ProcessExecutor(max_workers=2)
        supervisor = Supervisor.attach(
            redis_config={"url": sys.argv[1]}, executor=executor, secret=b"script"
        )
        out = await supervisor.start_flow(
            Flow.from_processors(xp.ticker).resolve(), [IOVal("period", 0.05)]
        )
        await out["where"].first()
        print(" ".join(map(str, executor.pids())), flush=True)
        async for _ in out["ticks"].stream():
            pass


    if __name__ == "__main__":
        anyio.run(main, backend=sys.argv[2])
    """
)


@pytest.fixture(params=["asyncio", "trio"])
def script(
    tmp_path: Path, valkey_url: str, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A caller running a streaming flow on a ProcessExecutor; yields it and its workers' pids."""
    path = tmp_path / "caller.py"
    path.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(path), valkey_url, request.param], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()  # bounded by the test's timeout
    pids = [int(p) for p in line.split()]
    try:
        assert len(pids) == 2, process.stderr.read() if process.stderr else line
        yield process, pids
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        for pid in pids:  # whatever the test did, leave nothing behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_exit_when_their_caller_is_killed(
    script: tuple[subprocess.Popen[str], list[int]],
) -> None:
    process, pids = script
    assert all(alive(pid) for pid in pids)
    os.kill(process.pid, signal.SIGKILL)  # no atexit, no detach: only the pipes close
    process.wait(10)
    assert wait_gone(pids) == []


def test_ctrl_c_stops_the_caller_and_its_workers(
    script: tuple[subprocess.Popen[str], list[int]],
) -> None:
    process, pids = script
    os.killpg(process.pid, signal.SIGINT)  # what a terminal does: the whole process group
    try:
        _, err = process.communicate(timeout=EXIT_DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail("the caller did not exit on Ctrl-C")
    assert "KeyboardInterrupt" in err
    assert wait_gone(pids, 0.5) == [], "a worker outlived the caller's Ctrl-C"
