"""A flow with a slow stage behind a small backpressure limit, for the history tests.

``hist_source -> hist_slow -> caller``: ``hist_source`` counts to ``hist_n``
and may run at most :data:`LIMIT` values ahead of ``hist_slow``, which spends
3 ms of CPU on each of its first ``hist_slow_for`` values (busy, not idle),
then passes the rest on at once.  ``python -m tests.history_support URL``
runs it once against the store at URL and prints the run id.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator

import anyio

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor

#: Values through the flow, and how many of them are slow.
COUNT = 2400
SLOW_VALUES = 1000
LIMIT = 100
SECRET = b"history-test-secret"

hist_source = Processor("hist_source", ["hist_n"], ["hist_nums"], max_backlog=LIMIT)
hist_slow = Processor("hist_slow", ["hist_nums", "hist_slow_for"], ["hist_out"])


@hist_source
async def _hist_source(hist_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await hist_n.first()):
        yield IOVal("hist_nums", i)


@hist_slow
async def _hist_slow(hist_nums: IO[int], hist_slow_for: IO[int]) -> AsyncIterator[IOVal[int]]:
    slow = await hist_slow_for.first()
    async for value in hist_nums:
        if value < slow:
            time.sleep(0.003)  # noqa: ASYNC251 (CPU-bound work: the stage is busy, not idle)
        yield IOVal("hist_out", value)


SLOW_FLOW = Flow.from_processors(hist_source, hist_slow, name="hist-flow").resolve()


def inputs(count: int = COUNT, slow: int = SLOW_VALUES) -> list[IOVal[int]]:
    return [IOVal("hist_n", count), IOVal("hist_slow_for", slow)]


async def run_slow_flow(supervisor: Supervisor, count: int = COUNT, slow: int = SLOW_VALUES) -> str:
    """Run the flow to its end; its run id."""
    out = await supervisor.start_flow(SLOW_FLOW, inputs(count, slow))
    assert await out["hist_out"].collect() == list(range(count))
    run_id = out["hist_out"].run_id
    assert await supervisor.wait(run_id, timeout=10) == "succeeded"
    return run_id


async def _main(url: str) -> None:
    Supervisor.attach(redis_config={"url": url}, executor=LocalExecutor(), secret=SECRET)
    try:
        print(await run_slow_flow(Supervisor.instance), flush=True)
    finally:
        await Supervisor.adetach()


if __name__ == "__main__":
    anyio.run(_main, sys.argv[1])
