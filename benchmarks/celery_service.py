"""The Celery service of the celery benchmark.

    celery -A benchmarks.celery_service worker --prefetch-multiplier=1 --disable-prefetch

Environment (set by ``benchmarks/celery_stream.py``, which starts the workers):

* ``DATAGRAPH_REDIS_URL``: the Valkey that is the store; ``DATAGRAPH_SECRET``: its signing key;
* ``DATAGRAPH_BENCH_BROKER``: the Valkey database that is Celery's broker;
* ``DATAGRAPH_BENCH_IMPLEMENT``: comma-separated processors this worker implements
  (default: all of them), so one flow can be spread over several workers.

It also defines the plain Celery tasks of the baseline, a chain of the same
stages with one task per value per stage.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from celery import Celery

from datagraph import IO, IOVal, Processor, Supervisor
from datagraph.executors import CeleryExecutor

__all__ = ["CHAIN_QUEUE", "DONE_KEY", "PROCESSORS", "make_app"]

#: Queue of the plain-Celery baseline tasks.
CHAIN_QUEUE = "bench-chain"
#: Counter the last task of each chain increments.
DONE_KEY = "bench:chain:done"

celery_source = Processor("celery-source", inputs=["n"], outputs=["nums"])
celery_double = Processor("celery-double", inputs=["nums"], outputs=["out"])
PROCESSORS = (celery_source, celery_double)


def make_app(broker: str) -> Celery:
    app = Celery("datagraph-bench", broker=broker)
    app.conf.update(
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.double", shared=False)  # type: ignore[untyped-decorator]
    def double(x: int) -> int:
        return x * 2

    @app.task(name="bench.done", shared=False)  # type: ignore[untyped-decorator]
    def done(x: int) -> None:
        _counter().incr(DONE_KEY)

    return app


_client: Any = None


def _counter() -> Any:
    """A plain Valkey client for the baseline's counter (redis-py: Celery's transport has it)."""
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(os.environ["DATAGRAPH_REDIS_URL"])
    return _client


async def _source(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await n.first()):
        yield IOVal("nums", i)


async def _double(nums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in nums.stream():
        yield IOVal("out", x * 2)


_IMPLEMENTATIONS = {celery_source.name: _source, celery_double.name: _double}

if os.environ.get("DATAGRAPH_BENCH_BROKER"):
    # Imported as a worker's service module (the benchmark itself only needs make_app).
    app = make_app(os.environ["DATAGRAPH_BENCH_BROKER"])
    wanted = os.environ.get("DATAGRAPH_BENCH_IMPLEMENT", ",".join(_IMPLEMENTATIONS))
    for processor in PROCESSORS:
        if processor.name in wanted.split(","):
            processor(_IMPLEMENTATIONS[processor.name])
    Supervisor.attach(executor=CeleryExecutor(app))
