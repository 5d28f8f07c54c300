"""What a small run costs the store: its reads, and the processor states it records on the way."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.executors import LocalExecutor
from datagraph.plan import Plan
from datagraph.store import keys, scripts
from datagraph.store.batch import pipeline
from datagraph.store.fold import folded
from datagraph.store.scripts import _SAMPLE
from datagraph.telemetry import Telemetry

pytestmark = pytest.mark.anyio

#: Deadline for a state to appear in the store.
DEADLINE = 10.0


async def _calls(supervisor: Supervisor, command: str) -> int:
    """How many times the (standalone) store has run ``command``, by ``INFO commandstats``."""
    runtime = await supervisor.runtime()
    info = await runtime.client.custom_command(["INFO", "commandstats"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def _xread_calls(supervisor: Supervisor) -> int:
    return await _calls(supervisor, "xread")


async def _stats(supervisor: Supervisor, run_id: str) -> dict[str, str]:
    runtime = await supervisor.runtime()
    raw: Any = await runtime.client.custom_command(["HGETALL", keys.stats(run_id)])
    return {k.decode(): v.decode() for k, v in raw.items()}


async def _wait_for_state(supervisor: Supervisor, run_id: str, name: str, state: str) -> dict[str, str]:
    with anyio.fail_after(DEADLINE):
        while True:
            stats = await _stats(supervisor, run_id)
            if stats.get(f"state:{name}") == state:
                return stats
            await anyio.sleep(0.01)


async def test_one_value_run_reads_each_stream_once(supervisor: Supervisor, valkey_url: str) -> None:
    """The last value and the end of a stream arrive together: no second read for the end."""
    # Read from the store, not handed over in this process (tests/test_local_streams.py).
    await Supervisor.adetach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url},
        executor=LocalExecutor(),
        secret=b"test-secret",
        hand_over_local=False,
    )
    source = Processor("cost_source", ["cost_n"], ["cost_nums"])
    double = Processor("cost_double", ["cost_nums"], ["cost_out"])

    @source
    async def _source(cost_n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await cost_n.first()):
            yield IOVal("cost_nums", i + 1)

    @double
    async def _double(cost_nums: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for x in cost_nums:
            yield IOVal("cost_out", x * 2)

    flow = Flow.from_processors(source, double).resolve()
    warm = await supervisor.start_flow(flow, [IOVal("cost_n", 1)])  # opens the readers' clients
    assert await warm["cost_out"].collect() == [2]

    before = await _xread_calls(supervisor)
    out = await supervisor.start_flow(flow, [IOVal("cost_n", 1)])
    assert await out["cost_out"].collect() == [2]
    run_id = out["cost_out"].run_id
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"
    # One XREAD each for the double's input and the caller's output; the source is handed
    # the run's input by start_flow (same process) instead of reading it back.
    assert await _xread_calls(supervisor) - before == 2

    stats = await _stats(supervisor, run_id)
    for name in ("cost_source", "cost_double"):
        assert stats[f"state:{name}"] == "done"
        assert stats[f"worker:{name}"] == supervisor.worker_id
        assert float(stats[f"started:{name}"]) <= float(stats[f"ended:{name}"])
        # A short run publishes its time split once, at its end.
        assert f"busy:{name}" in stats and f"idle:{name}" in stats


async def _quiet_and_warm(valkey_url: str) -> Supervisor:
    """A supervisor whose heartbeat stays out of a counted window, after one run of TWO_STAGES
    (its scripts cached, its readers' connections open)."""
    await Supervisor.adetach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, secret=b"test-secret", heartbeat_interval=600.0
    )
    warm = await supervisor.start_flow(TWO_STAGES, [IOVal("sha_n", 1)])
    assert await warm["sha_out"].collect() == [2]
    return supervisor


class _Pipelines:
    """The command lists of every round trip the runtime's client makes (a spy on the glide
    client): each batch, and each command sent on its own."""

    def __init__(self, client: Any) -> None:
        self.sent: list[list[list[Any]]] = []
        #: How many commands went on the wire in each round trip of ``sent`` (a fold is one).
        self.wire: list[int] = []
        self._client, self._exec, self._command = client, client.exec, client.custom_command
        client.exec = self._spy
        client.custom_command = self._spy_command

    def _note(self, commands: list[Any]) -> None:
        sent = []
        for command in commands:
            sent += folded(command) or [list(command)]  # a fold, as the commands it carries
        self.sent.append(sent)
        self.wire.append(len(commands))

    async def _spy(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        self._note([command for _, command in batch.commands])
        return await self._exec(batch, *args, **kwargs)

    async def _spy_command(self, command: list[Any], *args: Any, **kwargs: Any) -> Any:
        self._note([command])
        return await self._command(command, *args, **kwargs)

    def stop(self) -> None:
        del self._client.exec
        del self._client.custom_command


async def test_a_run_is_recorded_in_the_pipeline_of_its_first_write(
    supervisor: Supervisor, valkey_url: str
) -> None:
    """A run whose processors all run here starts in one round trip: the source's closing flush
    carries the run's record ahead of its own writes, and the run takes two pipelines in all,
    each one command on a standalone store (the run index's ZADD folded in with the rest)."""
    supervisor = await _quiet_and_warm(valkey_url)
    flow = TWO_STAGES
    runtime = await supervisor.runtime()
    spy = _Pipelines(runtime.client)
    try:
        out = await supervisor.start_flow(flow, [IOVal("sha_n", 1)])
        assert await out["sha_out"].collect() == [2]
        sent, wire = list(spy.sent), list(spy.wire)
    finally:
        spy.stop()
    run_id = out["sha_out"].run_id
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"
    of_run = [batch for batch in sent if any(run_id in str(c[1]) for c in batch)]
    assert [n for n, batch in zip(wire, sent, strict=True) if batch in of_run] == [1, 1]
    # The record, with the source's values and end.
    first = of_run[0]
    assert [c for c in first if c[0] == "ZADD"] == [["ZADD", keys.RUNS, ANY, run_id]]
    start = next(i for i, c in enumerate(first) if c[0] == "EVALSHA" and c[3] == keys.run(run_id))
    nums = keys.stream(run_id, "sha_nums")
    writes = [i for i, c in enumerate(first) if c[1:2] == [nums]]
    assert [first[i][0] for i in writes] == ["XADD", "XADD", "EXPIRE"] and start < writes[0]
    # Then the double's closing flush; nothing else (the caller reads its value here).
    assert len(of_run) == 2
    assert not any(c[0] == "ZADD" for c in of_run[1])


async def test_running_state_rides_the_first_read(supervisor: Supervisor) -> None:
    """A processor parked after its first read shows as running on that worker."""
    gate = anyio.Event()
    parked = Processor("cost_parked", ["cost_in"], ["cost_parked_out"])

    @parked
    async def _parked(cost_in: IO[int]) -> AsyncIterator[IOVal[int]]:
        value = await cost_in.first()
        await gate.wait()
        yield IOVal("cost_parked_out", value)

    out = await supervisor.start_flow(Flow.from_processors(parked).resolve(), [IOVal("cost_in", 7)])
    run_id = out["cost_parked_out"].run_id
    stats = await _wait_for_state(supervisor, run_id, "cost_parked", "running")
    assert stats["worker:cost_parked"] == supervisor.worker_id
    gate.set()
    assert await out["cost_parked_out"].collect() == [7]
    await _wait_for_state(supervisor, run_id, "cost_parked", "done")


async def test_running_state_of_a_processor_that_reads_nothing(supervisor: Supervisor) -> None:
    """With no read to ride on, the writer's flusher records the state at its first turn."""
    gate = anyio.Event()
    idle = Processor("cost_idle", [], ["cost_idle_out"])

    @idle
    async def _idle() -> AsyncIterator[IOVal[int]]:
        await gate.wait()
        yield IOVal("cost_idle_out", 1)

    out = await supervisor.start_flow(Flow.from_processors(idle).resolve())
    run_id = out["cost_idle_out"].run_id
    stats = await _wait_for_state(supervisor, run_id, "cost_idle", "running")
    assert "busy:cost_idle" not in stats  # nothing to say yet: the time split comes later
    gate.set()
    assert await out["cost_idle_out"].collect() == [1]
    stats = await _wait_for_state(supervisor, run_id, "cost_idle", "done")
    assert float(stats["busy:cost_idle"]) >= 0.0


def test_plan_json_round_trips() -> None:
    spec = Processor("cost_plan", ["cost_plan_in"], ["cost_plan_out"])
    flow = Flow.from_processors(spec).resolve()
    plan = Plan.build("r1", flow, outputs=["cost_plan_out"], default_backlog=10, trim=True)
    assert Plan.from_json(plan.to_json()) == plan


def _fresh_json(plan: Plan) -> str:
    """``plan.to_json()`` as a plan built field by field (no shared serialisation) gives it."""
    stored = {name: getattr(plan, name) for name in json.loads(plan.to_json())}
    return Plan(**stored).to_json()


def test_plans_of_a_flow_started_again_serialise_like_fresh_ones() -> None:
    """The part of a plan's JSON after the run id is made once per flow and options, and follows changes."""
    first = Processor("cost_tpl_a", ["cost_tpl_in"], ["cost_tpl_mid"])
    second = Processor("cost_tpl_b", ["cost_tpl_mid"], ["cost_tpl_out"], max_backlog=7)
    flow = Flow.from_processors(first, second).resolve()
    plans = [
        Plan.build("r1", flow, outputs=["cost_tpl_out"], default_backlog=10, trim=True),
        Plan.build("r2", flow, outputs=["cost_tpl_out"], default_backlog=10, trim=True),
        Plan.build("r3", flow, outputs=["cost_tpl_mid", "cost_tpl_out"], default_backlog=10, trim=False),
        Plan.build("r4", flow, outputs=["cost_tpl_out"], default_backlog=20, trim=True),
    ]
    flow.name = "renamed"
    plans.append(Plan.build("r5", flow, outputs=["cost_tpl_out"], default_backlog=10, trim=True))
    flow.processors = (first,)
    flow.resolve()
    plans.append(Plan.build("r6", flow, outputs=["cost_tpl_mid"], default_backlog=10, trim=True))
    for plan in plans:
        assert plan.to_json() == _fresh_json(plan)
        assert Plan.from_json(plan.to_json()) == plan
    stored = [json.loads(plan.to_json()) for plan in plans]
    assert [s["run_id"] for s in stored] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert stored[2]["outputs"] == ["cost_tpl_mid", "cost_tpl_out"] and stored[2]["trim"] is False
    assert stored[3]["max_backlog"] == {"cost_tpl_a": 20, "cost_tpl_b": 7}
    assert stored[4]["flow"]["name"] == "renamed"
    assert [p["name"] for p in stored[5]["flow"]["processors"]] == ["cost_tpl_a"]


_sha_source = Processor("sha_source", ["sha_n"], ["sha_nums"])
_sha_double = Processor("sha_double", ["sha_nums"], ["sha_out"])


@_sha_source
async def _count_up(sha_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await sha_n.first()):
        yield IOVal("sha_nums", i + 1)


@_sha_double
async def _twice(sha_nums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in sha_nums:
        yield IOVal("sha_out", x * 2)


TWO_STAGES = Flow.from_processors(_sha_source, _sha_double).resolve()


async def test_a_run_sends_scripts_by_sha_and_reads_its_state_in_one_command(
    supervisor: Supervisor, valkey_url: str
) -> None:
    """After the first run, scripts travel as their SHA1; a closing flush reads state and error
    with one HMGET, and no reader positions (nothing more will be written)."""
    supervisor = await _quiet_and_warm(valkey_url)
    flow = TWO_STAGES

    counted = ("eval", "evalsha", "hmget")
    before = {c: await _calls(supervisor, c) for c in counted}
    out = await supervisor.start_flow(flow, [IOVal("sha_n", 1)])
    assert await out["sha_out"].collect() == [2]
    after = {c: await _calls(supervisor, c) for c in counted}
    assert after["eval"] == before["eval"]  # no script text sent again
    # The start, each processor's end and its history sample go inside one script per
    # processor's closing flush (datagraph.store.fold), by SHA1.
    assert after["evalsha"] - before["evalsha"] == 2
    # One per processor's closing flush: HMGET state error (not two HGETs), no positions.
    assert after["hmget"] - before["hmget"] == 2
    run_id = out["sha_out"].run_id
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"

    # The processors' read positions and "read to the end" marks went in one HSET each.
    runtime = await supervisor.runtime()
    raw: Any = await runtime.client.custom_command(["HGETALL", keys.pos(run_id)])
    pos = {k.decode(): v.decode() for k, v in raw.items()}
    assert pos[keys.pos_field("sha_double", "sha_nums")] == "1"
    assert pos[keys.pos_done_field("sha_double", "sha_nums")] == "1"
    assert pos[keys.pos_done_field("sha_source", "sha_n")] == "1"


@pytest.mark.stores
async def test_runs_go_on_when_the_store_forgets_its_scripts(supervisor: Supervisor) -> None:
    """A store restarted or failed over has no scripts cached: they are sent again with their text."""
    flow = TWO_STAGES
    warm = await supervisor.start_flow(flow, [IOVal("sha_n", 2)])
    assert await warm["sha_out"].collect() == [2, 4]
    runtime = await supervisor.runtime()
    await runtime.client.custom_command(["SCRIPT", "FLUSH"])

    out = await supervisor.start_flow(flow, [IOVal("sha_n", 3)])
    assert await out["sha_out"].collect() == [2, 4, 6]
    run_id = out["sha_out"].run_id
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"
    history = await runtime.client.custom_command(["XLEN", keys.history(run_id)])
    assert history >= 1  # the sample script ran too

    await runtime.client.custom_command(["SCRIPT", "FLUSH"])
    assert await supervisor.cancel(run_id) is False  # finish_run, sent alone, falls back too


@pytest.mark.stores
async def test_a_refused_script_goes_again_before_the_scripts_after_it(supervisor: Supervisor) -> None:
    """Only the history sample is cached (a failover half-way): the script that marks a
    processor done is refused, and the sample after it in the same flush must not record
    the processor as still running: both go again, in their order."""
    runtime = await supervisor.runtime()
    await runtime.client.custom_command(["SCRIPT", "FLUSH"])
    await runtime.client.custom_command(["SCRIPT", "LOAD", _SAMPLE.text])
    # One processor: its closing flush is the first to mark a processor done.
    out = await supervisor.start_flow(Flow.from_processors(_sha_source).resolve(), [IOVal("sha_n", 3)])
    assert await out["sha_nums"].collect() == [1, 2, 3]
    run_id = out["sha_nums"].run_id
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"
    history = await (await Telemetry.from_supervisor(supervisor)).history(run_id)
    assert history is not None
    assert history.processor("sha_source").state[-1] == "done"


async def test_the_run_index_is_trimmed_once_a_second(supervisor: Supervisor) -> None:
    flow = TWO_STAGES
    before = await _calls(supervisor, "zremrangebyscore")
    started = time.monotonic()
    for _ in range(5):
        out = await supervisor.start_flow(flow, [IOVal("sha_n", 1)])
        assert await out["sha_out"].collect() == [2]
    elapsed = time.monotonic() - started
    trims = await _calls(supervisor, "zremrangebyscore") - before
    assert 1 <= trims <= math.ceil(elapsed) + 1
    if elapsed < 3:
        assert trims < 5  # not one per run


@pytest.mark.stores
async def test_a_run_starts_with_every_key_bounded_and_its_inputs_counted(supervisor: Supervisor) -> None:
    """The start script writes inputs over several entries, counts them, and gives every key an expiry."""
    spec = Processor("start_sum", ["start_xs", "start_k"], ["start_total"])

    @spec
    async def _sum(start_xs: IO[int], start_k: IO[int]) -> AsyncIterator[IOVal[int]]:
        k = await start_k.first()
        yield IOVal("start_total", k * sum([x async for x in start_xs]))

    flow = Flow.from_processors(spec).resolve()
    values = list(range(2500))  # more than max_batch (1,000 by default): three entries
    out = await supervisor.start_flow(flow, [*(IOVal("start_xs", v) for v in values), IOVal("start_k", 3)])
    run_id = out["start_total"].run_id
    runtime = await supervisor.runtime()
    client = runtime.client
    stream = keys.stream(run_id, "start_xs")
    assert await client.custom_command(["XLEN", stream]) == 2500 // supervisor.settings.max_batch + 2
    bounded = [keys.run(run_id), keys.stats(run_id), keys.rerun(run_id), stream]
    bounded.append(keys.stream(run_id, "start_k"))
    for key in bounded:
        assert 0 < await client.custom_command(["TTL", key]) <= supervisor.settings.max_run_duration
    stats = await _stats(supervisor, run_id)
    assert stats["written:start_xs"] == "2500" and stats["written:start_k"] == "1"
    assert await out["start_total"].collect() == [3 * sum(values)]
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"


@pytest.mark.stores
async def test_the_start_script_may_run_twice(supervisor: Supervisor) -> None:
    """A pipeline retried after a lost connection runs it again: the same entries, no error."""
    runtime = await supervisor.runtime()
    run_id = "start-twice"
    entries = [("0-1", "b", b"one"), ("0-2", "e", b"end")]
    command = scripts.start_run_command(
        run_id, ttl="60", now="1.0", record=["state", "running"], kept=["omitted", "test"],
        streams={"twice_in": (entries, 1)},
    )  # fmt: skip
    for _ in range(2):
        replies, _ = await pipeline(runtime.client, [command], retry_for=1.0, doing="starting a test run")
        assert replies == [1]
    raw: Any = await runtime.client.custom_command(["XRANGE", keys.stream(run_id, "twice_in"), "-", "+"])
    assert len(raw) == 2
    await runtime.client.custom_command(["DEL", *keys.run_keys(run_id, ["twice_in"])])


#: Gates of the flow below, made fresh by its test.
_GATES: dict[str, anyio.Event] = {}
_end_source = Processor("end_source", ["end_n"], ["end_nums"])
_end_double = Processor("end_double", ["end_nums"], ["end_out"])


@_end_source
async def _end_source_body(end_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    value = await end_n.first()
    await _GATES["source"].wait()
    yield IOVal("end_nums", value)


@_end_double
async def _end_double_body(end_nums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for value in end_nums:
        await _GATES["double"].wait()
        yield IOVal("end_out", value * 2)


async def test_only_the_processor_that_ends_a_run_forces_its_history_sample(supervisor: Supervisor) -> None:
    """A short run takes one history sample, at its end: the start counts as sampled, a
    processor's closing flush samples only when due, and the one that ends the run always."""
    _GATES.update(source=anyio.Event(), double=anyio.Event())
    client = (await supervisor.runtime()).client
    flow = Flow.from_processors(_end_source, _end_double).resolve()
    out = await supervisor.start_flow(flow, [IOVal("end_n", 3)])
    run_id = out["end_out"].run_id
    history = keys.history(run_id)

    # The start is marked sampled, by the store's clock (ms).
    clock: Any = await client.custom_command(["TIME"])
    now = int(clock[0]) * 1000 + int(clock[1]) // 1000
    assert 0 <= now - int((await _stats(supervisor, run_id))["sampled"]) < DEADLINE * 1000
    # As if sampled an hour from now: no sample is due while the run goes on.
    await client.custom_command(["HSET", keys.stats(run_id), "sampled", str(now + 3_600_000)])

    _GATES["source"].set()
    await _wait_for_state(supervisor, run_id, "end_source", "done")
    assert await client.custom_command(["XLEN", history]) == 0  # the source's end did not force one

    _GATES["double"].set()
    assert await out["end_out"].collect() == [6]
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"
    assert await client.custom_command(["XLEN", history]) == 1
    recorded = await (await Telemetry.from_supervisor(supervisor)).history(run_id)
    assert recorded is not None and recorded.state == "succeeded"
    assert recorded.processor("end_source").state == ("done",)
    assert recorded.processor("end_double").state == ("done",)
    edge = recorded.edge("end_nums", "end_double")
    assert (edge.written, edge.read) == ((1,), (1,))
    assert recorded.edge("end_out", "(output)").written == (1,)
