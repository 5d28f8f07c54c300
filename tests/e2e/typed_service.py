"""A small service that registers typed processors next to the demo's, on the demo's store.

``python -m tests.e2e.typed_service <store-url>`` attaches a supervisor to
the store, publishes its registrations, heartbeats (so its processors are
online), prints ``ready`` and runs until its stdin closes; then it removes
its registrations and its worker record, so that the demo's registry is the
demo's again for the tests that follow. ``audit_orders`` reads the demo's
``orders`` (a ``dict[str, Any]``) as ``int``: a type mismatch for the
designer to flag.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import anyio

from datagraph import IO, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.store import keys
from datagraph.telemetry import Telemetry

audit_orders = Processor("audit_orders", inputs=["orders"], outputs=["audited"])
count_checked = Processor("count_checked", inputs=["checked"], outputs=["checked_count"])


@audit_orders
async def _audit_orders(orders: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Sums order amounts (but reads them as plain ints)."""
    total = 0
    async for value in orders.stream():
        total += value
    yield IOVal(name="audited", value=total)


@count_checked
async def _count_checked(checked: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Counts the checked numbers."""
    yield IOVal(name="checked_count", value=len(await checked.collect()))


async def main(store_url: str) -> None:
    supervisor = Supervisor.attach(redis_config={"url": store_url}, executor=LocalExecutor())
    try:
        worker_id = (await supervisor.runtime()).worker_id
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the test closes stdin
    finally:
        await Supervisor.adetach()
    names = [audit_orders.name, count_checked.name]
    async with await Telemetry.connect(store_url) as telemetry:
        for command in (
            ["HDEL", keys.PROCESSORS, *names],
            ["HDEL", keys.IMPLEMENTERS, *(keys.implementer_field(n, worker_id) for n in names)],
            ["ZREM", keys.WORKERS, worker_id],
            ["DEL", keys.worker(worker_id)],
        ):
            await telemetry.client.custom_command(command)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
