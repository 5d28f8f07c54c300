"""The ceiling: a raw valkey-glide relay, with no Datagraph in the way.

writer -> relay -> reader over two Valkey streams, each stage a plain loop of
sequential awaits: the writer ``XADD``s pickled batches, the relay ``XREAD``s
them, unpickles, re-pickles and ``XADD``s them to the second stream, the
reader ``XREAD``s and touches every value.  Blocking readers get their own
client, as glide requires.  This is the same shape as a 2-stage flow (source
-> map -> caller) minus everything the engine adds: signing, backpressure,
positions, counters, run records and per-value generators.
"""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from ._harness import open_client

__all__ = ["relay_latencies", "relay_throughput"]

_BLOCK_MS = "1000"
_READ_COUNT = "256"


async def _pump(
    client: Any, key: str, on_batch: Callable[[list[Any]], Any], forward_to: str | None = None
) -> None:
    """XREAD ``key`` until its end marker; forward each batch to ``forward_to`` if given."""
    last: Any = "0-0"
    while True:
        reply = await client.custom_command(
            ["XREAD", "COUNT", _READ_COUNT, "BLOCK", _BLOCK_MS, "STREAMS", key, last]
        )
        if not reply:
            continue
        for entries in reply.values():
            for entry_id, fields in entries.items():
                last = entry_id
                field, payload = fields[0]
                if field == b"e":
                    if forward_to is not None:
                        await client.custom_command(["XADD", forward_to, "*", "e", b""])
                    return
                values = pickle.loads(payload)
                on_batch(values)
                if forward_to is not None:
                    body = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
                    await client.custom_command(["XADD", forward_to, "*", "b", body])


class _Relay:
    def __init__(self, port: int) -> None:
        self.port = port
        tag = uuid.uuid4().hex
        self.first = f"bench:relay:{{{tag}}}:a"
        self.second = f"bench:relay:{{{tag}}}:b"

    async def __aenter__(self) -> _Relay:
        # The blocking readers' request timeout must exceed their BLOCK time.
        self.writer = await open_client(self.port)
        self.middle = await open_client(self.port, request_timeout=5.0)
        self.reader = await open_client(self.port, request_timeout=5.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.writer.custom_command(["UNLINK", self.first, self.second])
            for client in (self.writer, self.middle, self.reader):
                await client.close()


async def relay_throughput(
    port: int, n: int, make: Callable[[int, int], list[Any]], *, per_entry: int = 1000
) -> float:
    """Seconds to move ``n`` values (``make(start, stop)`` builds a batch) through the relay."""
    async with _Relay(port) as relay:
        received = 0

        def touch(values: list[Any]) -> None:
            nonlocal received
            for _ in values:
                received += 1

        async def write() -> None:
            for start in range(0, n, per_entry):
                body = pickle.dumps(make(start, min(n, start + per_entry)), protocol=pickle.HIGHEST_PROTOCOL)
                await relay.writer.custom_command(["XADD", relay.first, "*", "b", body])
            await relay.writer.custom_command(["XADD", relay.first, "*", "e", b""])

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump, relay.middle, relay.first, lambda values: None, relay.second)
            tg.start_soon(_pump, relay.reader, relay.second, touch)
            await write()
        elapsed = time.perf_counter() - started
        if received != n:
            raise RuntimeError(f"relay delivered {received} values, expected {n}")
        return elapsed


async def relay_latencies(port: int, n: int, *, pace: float) -> list[float]:
    """Per-value latency (write to read) of ``n`` single-value entries, one every ``pace`` seconds."""
    async with _Relay(port) as relay:
        latencies: list[float] = []

        def arrived(values: list[float]) -> None:
            now = time.perf_counter()
            latencies.extend(now - stamp for stamp in values)

        async def write() -> None:
            for _ in range(n):
                await anyio.sleep(pace)
                body = pickle.dumps([time.perf_counter()], protocol=pickle.HIGHEST_PROTOCOL)
                await relay.writer.custom_command(["XADD", relay.first, "*", "b", body])
            await relay.writer.custom_command(["XADD", relay.first, "*", "e", b""])

        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump, relay.middle, relay.first, lambda values: None, relay.second)
            tg.start_soon(_pump, relay.reader, relay.second, arrived)
            await write()
        return latencies
