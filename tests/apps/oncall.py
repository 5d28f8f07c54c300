"""A module for ``datagraph dashboard --app tests.apps.oncall``: processors run in the dashboard.

It implements its processors and attaches a ``LocalExecutor`` on
``$DATAGRAPH_REDIS_URL``, the path docs/dashboard.md gives for running flows
from the dashboard without Celery.

- ``oc_count -> oc_square``: counts to ``oc_n`` and squares; succeeds.
- ``oc_check``: fails when ``oc_value`` is negative, echoes it otherwise.
- ``oc_flood -> oc_trickle``: a fast source into a slow sink whose edge has a
  backpressure limit of 40 values, so it stays above 85 % full while it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import anyio

from datagraph import IO, IOVal, LocalExecutor, Processor, Supervisor

oc_count = Processor("oc_count", inputs=["oc_n"], outputs=["oc_numbers"])
oc_square = Processor("oc_square", inputs=["oc_numbers"], outputs=["oc_squares"])
oc_check = Processor("oc_check", inputs=["oc_value"], outputs=["oc_checked"])
# The writer's limit governs the edge it writes.
oc_flood = Processor("oc_flood", inputs=["oc_seconds"], outputs=["oc_flooded"], max_backlog=40)
oc_trickle = Processor("oc_trickle", inputs=["oc_flooded"], outputs=["oc_trickled"])


@oc_count
async def _count(oc_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Counts from zero up to ``oc_n``."""
    for i in range(await oc_n.first()):
        yield IOVal(name="oc_numbers", value=i)


@oc_square
async def _square(oc_numbers: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Squares every number."""
    async for value in oc_numbers.stream():
        yield IOVal(name="oc_squares", value=value * value)


@oc_check
async def _check(oc_value: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Refuses negative numbers."""
    value = await oc_value.first()
    if value < 0:
        raise ValueError(f"oc_check refuses negative numbers, got {value}")
    yield IOVal(name="oc_checked", value=value)


@oc_flood
async def _flood(oc_seconds: IO[float]) -> AsyncIterator[IOVal[int]]:
    """Writes as fast as backpressure lets it, for ``oc_seconds``."""
    deadline = time.monotonic() + await oc_seconds.first()
    i = 0
    while time.monotonic() < deadline:
        yield IOVal(name="oc_flooded", value=i)
        i += 1


@oc_trickle
async def _trickle(oc_flooded: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Reads ten values a second."""
    async for value in oc_flooded.stream():
        await anyio.sleep(0.1)
        yield IOVal(name="oc_trickled", value=value)


Supervisor.attach(
    redis_config={"url": os.environ["DATAGRAPH_REDIS_URL"]}, executor=LocalExecutor(), secret=b"oncall-secret"
)
