"""designer with a large registry: server time of the palette filter and of a design's workspace.

Registrations are written straight into the store (as workers publish them:
one JSON record per processor plus its implementer), for 10 processors (the
baseline) and for 500 (and 2,000 in a full run), spread over 25 modules. The
dashboard app is called in-process through httpx's ASGI transport, so the
figures are the server's time plus a few tens of microseconds of client; the
target is under 100 ms for the palette at 500 processors.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx

from datagraph.store import keys

from ._harness import Bench, fmt_ms, median, open_client

NAME = "designer"
BACKEND = "asyncio"
MODULES = 25


def _record(i: int, now: float) -> dict[str, Any]:
    name = f"bench_proc_{i:05d}"
    port = {"type": "int", "schema": {"type": "integer"}}
    return {
        "name": name,
        "inputs": [{"name": f"io_{i:05d}", **port}, {"name": f"side_{i % 7}", **port}],
        "outputs": [{"name": f"io_{i + 1:05d}", **port}],
        "wait": i % 50 == 49,
        "max_backlog": None,
        "description": f"Step {i} of a long benchmark chain.",
        "doc": f"Reads io_{i:05d} and writes io_{i + 1:05d}.",
        "module": f"bench.module_{i % MODULES:02d}",
        "function": f"_{name}",
        "kind": "async generator",
        "updated": now,
        "worker": "bench-worker",
    }


async def _register(bench: Bench, count: int) -> None:
    client = await open_client(bench.store.port)
    try:
        await client.custom_command(["DEL", keys.PROCESSORS, keys.IMPLEMENTERS])
        now = time.time()
        fields: list[str] = []
        implementers: list[str] = []
        for i in range(count):
            record = _record(i, now)
            fields += [record["name"], json.dumps(record)]
            implementers += [keys.implementer_field(record["name"], "bench-worker"), repr(now)]
        await client.custom_command(["HSET", keys.PROCESSORS, *fields])
        await client.custom_command(["HSET", keys.IMPLEMENTERS, *implementers])
    finally:
        await client.close()


async def _timings(bench: Bench, count: int, repeats: int) -> dict[str, float]:
    from web.app import create_app

    await _register(bench, count)
    app = create_app(redis_url=bench.store.url, token="", warm_up_graphviz=False)
    design = {"processor": [f"bench_proc_{i:05d}" for i in range(min(count, 8))]}
    requests = {
        "palette, filtered": ("/designer/palette", {"q": "module_07 step"}),
        "palette, everything": ("/designer/palette", {"q": ""}),
        "workspace, 8 processors": ("/designer/workspace", design),
    }
    result: dict[str, float] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for label, (path, params) in requests.items():
                await client.get(path, params=params, headers={"HX-Request": "true"})  # warm caches
                samples = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    response = await client.get(path, params=params, headers={"HX-Request": "true"})
                    samples.append(time.perf_counter() - started)
                    response.raise_for_status()
                result[label] = median(samples)
    return result


def run(bench: Bench) -> dict[str, Any]:
    sizes = bench.pick([10, 500], [10, 500, 2_000])
    repeats = bench.pick(10, 30)
    bench.title(NAME, f"designer requests with {', '.join(map(str, sizes))} registered processors; "
                f"median of {repeats}")
    by_size = {n: anyio.run(_timings, bench, n, repeats, backend=BACKEND) for n in sizes}
    baseline = by_size[sizes[0]]
    for n, timings in by_size.items():
        for label, seconds in timings.items():
            ratio = "baseline" if n == sizes[0] else f"{seconds / baseline[label]:.1f}x {sizes[0]} processors"
            bench.row(f"{n} processors: {label}", fmt_ms(seconds), ratio)
    got = {"sizes": sizes, "repeats": repeats, "seconds": {str(n): t for n, t in by_size.items()}}
    bench.record(NAME, **got)
    return got
