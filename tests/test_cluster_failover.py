"""A Valkey Cluster primary killed mid-run: its replica takes over, no run hangs or is wrong."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.embedded_cluster import EmbeddedCluster
from datagraph.exceptions import DatagraphError

pytestmark = pytest.mark.anyio

RUNS = 12
VALUES = 400
RECONNECT = 15.0

fo_src = Processor("fo_src", ["fo_n"], ["fo_xs"])
fo_dbl = Processor("fo_dbl", ["fo_xs"], ["fo_ys"])


@fo_src
async def _fo_src(fo_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await fo_n.first()):
        if i % 20 == 0:
            await anyio.sleep(0.02)  # a run lasts about half a second
        yield IOVal("fo_xs", i)


@fo_dbl
async def _fo_dbl(fo_xs: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in fo_xs:
        yield IOVal("fo_ys", 2 * x)


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    """A cluster of its own: this test kills one of its nodes."""
    cluster = EmbeddedCluster(primaries=3, replicas=1, node_timeout=1.0)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _one_run(supervisor: Supervisor, flow: Flow, outcomes: list[str]) -> None:
    """Record 'exact', 'error' or 'wrong'; a hang fails the whole test by its deadline."""
    started = time.monotonic()
    try:
        out = await supervisor.start_flow(flow, [IOVal("fo_n", VALUES)])
        values = await out["fo_ys"].collect()
    except DatagraphError as exc:
        # Failing is allowed, but only with a clear error, and within the reconnect deadline.
        assert str(exc), "an error without a message"
        assert time.monotonic() - started < RECONNECT + 10, f"took {time.monotonic() - started:.1f}s to fail"
        outcomes.append("error")
        return
    outcomes.append("exact" if values == [2 * i for i in range(VALUES)] else "wrong")


async def test_killing_a_primary_mid_run_loses_no_run(cluster: EmbeddedCluster, anyio_backend: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": cluster.url}, executor=LocalExecutor(), secret=b"t",
        request_timeout=2, reconnect_timeout=RECONNECT, namespace="failover",
    )
    try:
        flow = Flow.from_processors(fo_src, fo_dbl).resolve()
        warmup: list[str] = []
        await _one_run(supervisor, flow, warmup)  # connections open before the chaos
        assert warmup == ["exact"]
        outcomes: list[str] = []
        victim = cluster.primary_nodes()[0]
        with anyio.fail_after(RECONNECT + 40):
            async with anyio.create_task_group() as tg:
                for _ in range(RUNS):
                    tg.start_soon(_one_run, supervisor, flow, outcomes)
                await anyio.sleep(0.2)
                cluster.kill(victim)
        assert len(outcomes) == RUNS
        assert outcomes.count("wrong") == 0, outcomes
        # The replica took over: the cluster serves every slot again, without the victim.
        cluster.wait_healthy(timeout=30)
        assert victim not in cluster.primary_nodes()
        after: list[str] = []
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(_one_run, supervisor, flow, after)
        assert after == ["exact"] * 6, after
        print(f"in flight at the kill: {outcomes.count('exact')} exact, {outcomes.count('error')} failed")
    finally:
        await Supervisor.adetach()
