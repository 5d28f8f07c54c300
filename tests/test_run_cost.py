"""What a small run costs the store: its reads, and the processor states it records on the way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.plan import Plan
from datagraph.store import keys

pytestmark = pytest.mark.anyio

#: Deadline for a state to appear in the store.
DEADLINE = 10.0


async def _xread_calls(supervisor: Supervisor) -> int:
    runtime = await supervisor.runtime()
    info = await runtime.client.custom_command(["INFO", "commandstats"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("cmdstat_xread:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


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


async def test_one_value_run_reads_each_stream_once(supervisor: Supervisor) -> None:
    """The last value and the end of a stream arrive together: no second read for the end."""
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
    # One XREAD each: the source's input, the double's input, the caller's output.
    assert await _xread_calls(supervisor) - before == 3

    stats = await _stats(supervisor, run_id)
    for name in ("cost_source", "cost_double"):
        assert stats[f"state:{name}"] == "done"
        assert stats[f"worker:{name}"] == supervisor.worker_id
        assert float(stats[f"started:{name}"]) <= float(stats[f"ended:{name}"])
        # A short run publishes its time split once, at its end.
        assert f"busy:{name}" in stats and f"idle:{name}" in stats


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
