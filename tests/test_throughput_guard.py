"""A guard against gross throughput regressions.

Pushes 50,000 ints through source -> map(x*2) -> caller and fails only below
20,000 values/s, about a tenth of what the engine does on a 2-core machine:
it catches a 10x slowdown (a per-value round trip, a lost batch), not noise.
The real figures, with their baselines, come from ``python -m benchmarks``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

N = 50_000
FLOOR = 20_000  # values/s
ATTEMPTS = 3  # a shared machine can stall one attempt; a regression fails all of them

guard_source = Processor("guard-source", inputs=["n"], outputs=["nums"])
guard_double = Processor("guard-double", inputs=["nums"], outputs=["out"])


@guard_source
async def _guard_source(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("nums", i)


@guard_double
async def _guard_double(nums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in nums.stream():
        yield IOVal("out", x * 2)


async def test_two_stage_flow_moves_at_least_20k_values_per_second(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(guard_source, guard_double).resolve()
    rates = []
    for _ in range(ATTEMPTS):
        started = time.perf_counter()
        outputs = await supervisor.start_flow(flow, inputs=[IOVal("n", N)])
        count = total = 0
        async for value in outputs["out"].stream():
            count += 1
            total += value
        rates.append(N / (time.perf_counter() - started))
        assert (count, total) == (N, N * (N - 1))
        assert await supervisor.wait(outputs["out"].run_id, timeout=10) == "succeeded"
        if rates[-1] >= FLOOR:
            break
    assert max(rates) >= FLOOR, (
        f"a 2-stage flow moved {max(rates):,.0f} values/s at best over {len(rates)} attempts "
        f"(floor {FLOOR:,}); profile it with `python -m benchmarks.profile`"
    )
