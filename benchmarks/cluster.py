"""cluster: many concurrent runs on a standalone Valkey vs a 3-shard Valkey Cluster.

* throughput: 100 runs of the pipeline ``source -> map -> caller`` at once
  (N values each), wall time from the first ``start_flow`` to the last value
  read; values/s over all runs.  Baseline: the same on the bench's
  standalone Valkey, in the same process.
* keys per shard: after 100 runs (their keys kept), how the keys are spread
  over the 3 primaries (each run's keys share one slot, so runs spread).
* one value: ``start_flow`` -> ``first()`` of a 1-value run, p50/p99.

The cluster is 3 primaries with a replica each (what failover needs), all on
this machine: on 2 cores the cluster's extra processes (and replication)
compete with the client for the same CPUs, so expect a ratio at or below 1x
here.  What a cluster buys is capacity and throughput across machines: each
shard brings its own memory, network and CPU, and runs spread evenly over
shards; one run stays bounded by its own shard.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from datagraph import IOVal, LocalExecutor, Supervisor
from datagraph.embedded_cluster import EmbeddedCluster
from datagraph.store import keys

from ._flows import PIPELINE
from ._harness import FIGURES_NOTE, SECRET, Bench, fmt_rate, median, percentile

NAME = "cluster"
BACKEND = "asyncio"
RUNS = 100
LATENCY_RUNS = 200

T = TypeVar("T")


def _session(url: str, func: Callable[[Supervisor], Awaitable[T]]) -> T:
    Supervisor.detach()
    supervisor = Supervisor.attach(redis_config={"url": url}, executor=LocalExecutor(), secret=SECRET)

    async def main() -> T:
        try:
            return await func(supervisor)
        finally:
            await Supervisor.adetach()

    try:
        return anyio.run(main, backend=BACKEND)
    finally:
        Supervisor.detach()


async def _forget(supervisor: Supervisor, run_ids: list[str]) -> None:
    client = (await supervisor.runtime()).client
    ios = list(PIPELINE.topology.ios)
    for run_id in run_ids:  # one UNLINK per run: a run's keys share one slot
        await client.custom_command(["UNLINK", *keys.run_keys(run_id, ios)])
    await client.custom_command(["DEL", keys.RUNS])


async def _many_runs(supervisor: Supervisor, n: int, *, keep: bool = False) -> tuple[float, list[str]]:
    """``RUNS`` runs of ``n`` values at once; (values/s, run ids)."""
    run_ids: list[str] = []
    counts: list[int] = []

    async def one() -> None:
        out = await supervisor.start_flow(PIPELINE, inputs=[IOVal("n", n)])
        run_ids.append(out["out"].run_id)
        read = 0
        async for batch in out["out"].batches():
            read += len(batch)
        counts.append(read)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(RUNS):
            tg.start_soon(one)
    elapsed = time.perf_counter() - started
    if sum(counts) != RUNS * n:
        raise RuntimeError(f"read {sum(counts)} values, expected {RUNS * n}")
    for run_id in run_ids:
        state = await supervisor.wait(run_id, timeout=60)
        if state != "succeeded":
            raise RuntimeError(f"benchmark run {run_id} ended {state}")
    if not keep:
        await _forget(supervisor, run_ids)
    return RUNS * n / elapsed, run_ids


async def _one_value(supervisor: Supervisor) -> list[float]:
    samples = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        out = await supervisor.start_flow(PIPELINE, inputs=[IOVal("n", 1)])
        await out["out"].first()
        samples.append(time.perf_counter() - started)
        await supervisor.wait(out["out"].run_id, timeout=30)
        await _forget(supervisor, [out["out"].run_id])
    return samples


def _measure(url: str, n: int) -> dict[str, Any]:
    async def measure(supervisor: Supervisor) -> dict[str, Any]:
        await _many_runs(supervisor, 100)  # warm up: connections, code paths
        rate, _ = await _many_runs(supervisor, n)
        latency = await _one_value(supervisor)
        return {"values_per_s": rate, "latency": latency}

    return _session(url, measure)


def _keys_per_shard(cluster: EmbeddedCluster, n: int) -> list[int]:
    async def spread(supervisor: Supervisor) -> list[int]:
        _, run_ids = await _many_runs(supervisor, n, keep=True)
        counts = [int(node.command("DBSIZE")) for node in cluster.primary_nodes()]
        await _forget(supervisor, run_ids)
        return counts

    return _session(cluster.url, spread)


def run(bench: Bench) -> dict[str, Any]:
    n = bench.pick(2_000, 10_000)
    rounds = bench.pick(2, 3)
    bench.title(
        NAME,
        f"{RUNS} concurrent pipeline runs of {n:,} values; standalone Valkey vs a 3-shard cluster "
        f"(a replica each, same machine); LocalExecutor, {BACKEND}, best of {rounds} rounds",
    )
    bench.say(f"  {FIGURES_NOTE}")
    cluster = EmbeddedCluster(primaries=3, replicas=1)
    cluster.start()
    try:
        standalone, clustered = [], []
        for _ in range(rounds):
            standalone.append(_measure(bench.store.url, n))
            clustered.append(_measure(cluster.url, n))
        shards = _keys_per_shard(cluster, n)
    finally:
        cluster.stop()
    best_s = max(r["values_per_s"] for r in standalone)
    best_c = max(r["values_per_s"] for r in clustered)
    ratio = median(c["values_per_s"] / s["values_per_s"] for s, c in zip(standalone, clustered, strict=True))
    bench.row("standalone Valkey", fmt_rate(best_s), "baseline")
    bench.row("3-shard cluster", fmt_rate(best_c), f"{ratio:.2f}x standalone")
    even = sum(shards) / len(shards)
    spread = max(shards) / max(1, min(shards))
    bench.row(
        "keys per shard after 100 runs",
        " / ".join(str(k) for k in shards),
        f"max/min {spread:.2f}x",
        f"even would be {even:.0f} each; within 2x: {'yes' if spread <= 2 else 'NO'}",
    )
    lat: dict[str, dict[str, float]] = {}
    for label, results in (("standalone", standalone), ("cluster", clustered)):
        samples = [s for r in results for s in r["latency"]]
        lat[label] = {"p50_ms": percentile(samples, 50) * 1000, "p99_ms": percentile(samples, 99) * 1000}
    bench.row(
        "one value, standalone",
        f"p50 {lat['standalone']['p50_ms']:.2f} ms",
        "baseline",
        f"p99 {lat['standalone']['p99_ms']:.2f} ms",
    )
    bench.row(
        "one value, cluster",
        f"p50 {lat['cluster']['p50_ms']:.2f} ms",
        f"{lat['cluster']['p50_ms'] / lat['standalone']['p50_ms']:.2f}x standalone",
        f"p99 {lat['cluster']['p99_ms']:.2f} ms",
    )
    got = {
        "runs": RUNS,
        "n": n,
        "standalone_values_per_s": best_s,
        "cluster_values_per_s": best_c,
        "throughput_ratio": ratio,
        "keys_per_shard": shards,
        "shard_spread": spread,
        "latency": lat,
    }
    bench.record(NAME, backend=BACKEND, **got)
    return got
