from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor, embedded
from datagraph.exceptions import (
    ConfigError,
    MissingInputError,
    ProcessorFailed,
    RunCancelled,
    StoreError,
    StreamIdleTimeout,
    TamperedPayloadError,
    UnknownInputError,
    UnknownProcessorError,
    UnresolvedFlowError,
)
from datagraph.store import keys

pytestmark = pytest.mark.anyio

echo = Processor("echo", ["text"], ["echoed"])


@echo
async def _echo(text: IO[str]) -> AsyncIterator[IOVal[str]]:
    async for t in text:
        yield IOVal("echoed", t)


def test_instance_without_attach_is_a_clear_error() -> None:
    Supervisor.detach()
    with pytest.raises(ConfigError, match=r"Supervisor.attach"):
        Supervisor.instance  # noqa: B018


def test_attach_twice_is_a_clear_error(valkey_url: str) -> None:
    Supervisor.detach()
    Supervisor.attach(redis_config={"url": valkey_url})
    try:
        with pytest.raises(ConfigError, match="already attached"):
            Supervisor.attach(redis_config={"url": valkey_url})
        assert isinstance(Supervisor.instance.executor, LocalExecutor)
    finally:
        Supervisor.detach()


def test_attach_rejects_a_bad_executor_and_settings(valkey_url: str) -> None:
    Supervisor.detach()
    with pytest.raises(ConfigError, match="executor must be an Executor"):
        Supervisor.attach(redis_config={"url": valkey_url}, executor="local")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'max_backlogg'"):
        Supervisor.attach(redis_config={"url": valkey_url}, max_backlogg=3)
    with pytest.raises(ConfigError, match="redis_config must be a mapping"):
        Supervisor.attach(redis_config="redis://x")  # type: ignore[arg-type]


async def test_embedded_valkey_starts_and_stops() -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach()
    try:
        assert supervisor.embedded_url is not None
        out = await supervisor.start_flow(Flow.from_processors(echo).resolve(), [IOVal("text", "hi")])
        assert await out["echoed"].collect() == ["hi"]
    finally:
        await Supervisor.adetach()


_ATTACH_AND_WAIT = """
import sys, time
from datagraph import Supervisor
supervisor = Supervisor.attach()
print(supervisor.embedded_url, flush=True)
time.sleep(120)
"""


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux only")
def test_the_embedded_valkey_does_not_outlive_a_killed_process() -> None:
    """A script killed outright (no cleanup runs) leaves no valkey-server behind."""
    with subprocess.Popen(
        [sys.executable, "-c", _ATTACH_AND_WAIT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()  # ends: the child prints its URL, or exits
            assert line.startswith("redis://127.0.0.1:"), f"the child printed {line!r}"
            port = int(line.rsplit(":", 1)[1].split("/")[0])
            assert _answers_ping(port)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            deadline = time.monotonic() + 10
            while _answers_ping(port):
                assert time.monotonic() < deadline, f"the embedded Valkey on port {port} outlived its process"
                time.sleep(0.05)
        finally:
            child.kill()


def test_an_embedded_valkey_that_cannot_run_names_the_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = str(tmp_path / "valkey-server")
    monkeypatch.setattr(embedded, "valkey_binary", lambda: missing)
    server = embedded.EmbeddedValkey()
    with pytest.raises(StoreError, match=r"could not run .*valkey-server for the embedded Valkey"):
        server.start()
    assert server.process is None


async def test_unreachable_store_is_named_within_the_timeout() -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": "redis://127.0.0.1:1/0"}, connect_timeout=1)
    try:
        with anyio.fail_after(10), pytest.raises(StoreError, match=r"127\.0\.0\.1:1"):
            await supervisor.start_flow(Flow.from_processors(echo).resolve(), [IOVal("text", "x")])
    finally:
        Supervisor.detach()


async def test_missing_and_unknown_inputs_are_named(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(echo).resolve()
    with pytest.raises(MissingInputError, match="'text'"):
        await supervisor.start_flow(flow, [])
    with pytest.raises(UnknownInputError, match="'nope'"):
        await supervisor.start_flow(flow, [IOVal("text", "a"), IOVal("nope", 1)])
    with pytest.raises(UnresolvedFlowError):
        await supervisor.start_flow(Flow.from_processors(echo), [IOVal("text", "a")])


async def test_unimplemented_processor_is_named(supervisor: Supervisor) -> None:
    remote = Processor("implemented_elsewhere", ["a"], ["b"])
    with pytest.raises(UnknownProcessorError, match="'implemented_elsewhere'"):
        await supervisor.start_flow(Flow.from_processors(remote).resolve(), [IOVal("a", 1)])


async def test_several_values_for_one_input(supervisor: Supervisor) -> None:
    out = await supervisor.start_flow(
        Flow.from_processors(echo).resolve(), [IOVal("text", "a"), IOVal("text", "b")]
    )
    assert await out["echoed"].collect() == ["a", "b"]


@pytest.mark.stores
async def test_backpressure_bounds_how_far_a_producer_runs_ahead(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, secret=b"s")
    produced = 0
    lead: list[int] = []
    fast = Processor("bp_fast", ["n"], ["items"], max_backlog=50)
    slow = Processor("bp_slow", ["items"], ["seen"])

    @fast
    async def _fast(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        nonlocal produced
        for i in range(await n.first()):
            produced += 1
            yield IOVal("items", i)

    @slow
    async def _slow(items: IO[int]) -> AsyncIterator[IOVal[int]]:
        consumed = 0
        async for i in items:
            consumed += 1
            lead.append(produced - consumed)
            await anyio.sleep(0.002)
            yield IOVal("seen", i)

    try:
        out = await supervisor.start_flow(Flow.from_processors(fast, slow).resolve(), [IOVal("n", 400)])
        with anyio.fail_after(30):
            assert await out["seen"].collect() == list(range(400))
        assert max(lead) <= 2 * 50, max(lead)
        assert max(lead) >= 25  # the producer did run ahead, up to the limit
    finally:
        await Supervisor.adetach()


@pytest.mark.stores
async def test_failure_reaches_the_caller_within_seconds(supervisor: Supervisor) -> None:
    bad = Processor("raises_at_once", ["n"], ["out"])

    @bad
    async def _bad(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        raise ValueError(f"bad n {await n.first()}")
        yield IOVal("out", 0)  # pragma: no cover

    out = await supervisor.start_flow(Flow.from_processors(bad).resolve(), [IOVal("n", 3)])
    with anyio.fail_after(5), pytest.raises(ProcessorFailed, match=r"raises_at_once.*bad n 3"):
        await out["out"].first()
    run_id = out["out"].run_id
    assert await supervisor.wait(run_id, timeout=5) == "failed"


async def test_idle_producer_times_out_readers(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, idle_timeout=0.5, read_block=0.1, secret=b"s"
    )
    stuck = Processor("goes_silent", ["n"], ["out"])

    @stuck
    async def _stuck(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("out", await n.first())
        await anyio.sleep(30)

    try:
        out = await supervisor.start_flow(Flow.from_processors(stuck).resolve(), [IOVal("n", 1)])
        got = []
        with anyio.fail_after(10), pytest.raises(StreamIdleTimeout, match="'goes_silent'"):
            async for v in out["out"]:
                got.append(v)
        assert got == [1]
        await supervisor.cancel(out["out"].run_id)
    finally:
        await Supervisor.adetach()


@pytest.mark.stores
async def test_cancel_stops_processors_and_readers(supervisor: Supervisor) -> None:
    stopped = anyio.Event()
    endless = Processor("endless", ["n"], ["ticks"])

    @endless
    async def _endless(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        i = await n.first()
        try:
            while True:
                i += 1
                yield IOVal("ticks", i)
                await anyio.sleep(0.001)
        finally:
            stopped.set()

    out = await supervisor.start_flow(Flow.from_processors(endless).resolve(), [IOVal("n", 0)])
    run_id = out["ticks"].run_id
    assert await out["ticks"].first() == 1
    assert await supervisor.cancel(run_id) is True
    with anyio.fail_after(5), pytest.raises(RunCancelled):
        await out["ticks"].collect()
    with anyio.fail_after(5):
        await stopped.wait()
    assert await supervisor.run_state(run_id) == "cancelled"
    assert await supervisor.cancel(run_id) is False


@pytest.mark.stores
async def test_finished_run_keys_expire_after_retention(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, retention=60, secret=b"s")
    try:
        out = await supervisor.start_flow(Flow.from_processors(echo).resolve(), [IOVal("text", "a")])
        assert await out["echoed"].collect() == ["a"]
        run_id = out["echoed"].run_id
        assert await supervisor.wait(run_id, timeout=5) == "succeeded"
        runtime = await supervisor.runtime()
        for key in keys.run_keys(run_id, ["text", "echoed"]):
            ttl = await runtime.client.custom_command(["TTL", key])
            assert 0 < ttl <= 60, (key, ttl)
    finally:
        await Supervisor.adetach()


async def test_forged_entry_is_refused_and_never_unpickled(supervisor: Supervisor, tmp_path) -> None:
    import os
    import pickle

    marker_file = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker_file}",))

    out = await supervisor.start_flow(Flow.from_processors(echo).resolve(), [IOVal("text", "a")])
    run_id = out["echoed"].run_id
    assert await supervisor.wait(run_id, timeout=5) == "succeeded"
    runtime = await supervisor.runtime()
    forged_key = keys.stream(run_id, "forged")
    body = pickle.dumps([Exploit()])
    await runtime.client.custom_command(["XADD", forged_key, "*", "b", b"\x00" * 16 + body])
    forged: IO[object] = IO(supervisor, run_id, "forged")
    with anyio.fail_after(5), pytest.raises(TamperedPayloadError, match="bad signature"):
        await forged.first()
    assert not marker_file.exists()


@pytest.mark.stores
async def test_readers_past_the_blocking_pool_poll_and_lose_nothing(valkey_url: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, secret=b"s", max_blocking_readers=1)
    fan = Processor("pool_src", ["n"], ["xs"])
    sinks = [Processor(f"pool_sink{i}", ["xs"], [f"ys{i}"]) for i in range(3)]

    @fan
    async def _fan(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("xs", i)
            if i % 500 == 0:
                await anyio.sleep(0.01)  # make the readers wait now and then

    for i, sink in enumerate(sinks):

        @sink
        async def _sink(xs: IO[int], _i: int = i) -> AsyncIterator[IOVal[int]]:
            async for x in xs:
                yield IOVal(f"ys{_i}", x + _i)

    try:
        out = await supervisor.start_flow(Flow.from_processors(fan, *sinks).resolve(), [IOVal("n", 5000)])
        with anyio.fail_after(30):
            for i in range(3):
                assert await out[f"ys{i}"].collect() == [x + i for x in range(5000)]
        runtime = await supervisor.runtime()
        assert len(runtime.pool._all) <= 1
    finally:
        await Supervisor.adetach()


async def test_recording_a_run_drops_index_entries_of_runs_that_have_surely_expired(
    supervisor: Supervisor,
) -> None:
    # With no dashboard or `datagraph status` to prune it, the run index must not grow forever.
    runtime = await supervisor.runtime()
    horizon = supervisor.settings.max_run_duration + supervisor.settings.retention
    now = time.time()
    ancient, recent = f"ancient-{uuid.uuid4().hex}", f"recent-{uuid.uuid4().hex}"
    await runtime.client.custom_command(
        ["ZADD", keys.RUNS, repr(now - horizon - 60), ancient, repr(now - horizon + 3600), recent]
    )
    try:
        out = await supervisor.start_flow(Flow.from_processors(echo).resolve(), [IOVal("text", "hi")])
        assert await out["echoed"].collect() == ["hi"]
        assert await runtime.client.custom_command(["ZSCORE", keys.RUNS, ancient]) is None
        assert await runtime.client.custom_command(["ZSCORE", keys.RUNS, recent]) is not None
        assert await runtime.client.custom_command(["ZSCORE", keys.RUNS, out["echoed"].run_id]) is not None
    finally:
        await runtime.client.custom_command(["ZREM", keys.RUNS, ancient, recent])
