"""Celery with the store on a Valkey Cluster and the broker on a standalone Valkey.

kombu's Redis transport cannot use a cluster as its broker, so a deployment
whose store is a cluster keeps Celery's broker elsewhere (a standalone Valkey
here; RabbitMQ or any Celery broker works the same).  Real ``celery worker``
processes of two services run flows whose streams live on the cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.cluster import RedisCluster

from datagraph import Flow, IOVal, Supervisor
from datagraph.embedded_cluster import EmbeddedCluster
from datagraph.exceptions import ProcessorFailed
from tests.services import specs
from tests.test_celery import Worker, attach_caller, start_worker, wait_for_queues

pytestmark = [pytest.mark.celery, pytest.mark.anyio]


@pytest.fixture(scope="module")
def urls(valkey_cluster: EmbeddedCluster, valkey_server: object) -> tuple[str, str]:
    """The store on the cluster; the broker on the standalone Valkey (a database of its own)."""
    return valkey_cluster.url, f"redis://127.0.0.1:{valkey_server.port}/2"  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def services(urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    logs = tmp_path_factory.mktemp("celery-cluster-logs")
    workers = {
        "alpha": start_worker("alpha", "prefork", 2, urls, logs),
        "beta": start_worker("beta", "threads", 4, urls, logs),
    }
    store = RedisCluster.from_url(urls[0], decode_responses=True)
    try:
        wait_for_queues(store, list(workers.values()), [*specs.ALPHA, *specs.BETA], slots=3)  # type: ignore[arg-type]
        yield workers
    finally:
        store.close()
        for worker in workers.values():
            worker.kill()


@pytest.fixture
async def caller(
    services: dict[str, Worker], urls: tuple[str, str], anyio_backend: str
) -> AsyncIterator[Supervisor]:
    async with attach_caller(urls) as supervisor:
        yield supervisor


async def test_flow_across_two_services_streams_through_the_cluster(caller: Supervisor) -> None:
    flow = Flow.from_processors(specs.nums, specs.pair).resolve()
    for _ in range(3):  # runs land on different shards
        out = await caller.start_flow(flow, [IOVal("n", 5)])
        assert await out["sum"].collect() == [0, 101, 202, 303, 404]
        assert await caller.wait(out["sum"].run_id, timeout=10) == "succeeded"


async def test_wait_processor_and_two_outputs(caller: Supervisor) -> None:
    out = await caller.start_flow(Flow.from_processors(specs.split).resolve(), [IOVal("n", 10)])
    assert await out["even"].collect() == [0, 2, 4, 6, 8]
    assert await out["odd"].collect() == [1, 3, 5, 7, 9]
    flow = Flow.from_processors(specs.slow, specs.total).resolve()
    out = await caller.start_flow(flow, [IOVal("job", {"n": 10, "tag": "cluster"})])
    assert await out["sum"].first() == 45


async def test_a_failure_on_a_worker_reaches_the_caller(caller: Supervisor) -> None:
    flow = Flow.from_processors(specs.faulty, specs.drain).resolve()
    out = await caller.start_flow(flow, [IOVal("n", 3)])
    with pytest.raises(ProcessorFailed, match="c_faulty"):
        await out["drained"].collect()

