"""Namespaces: deployments sharing one store (one Valkey Cluster) never see each other."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.exceptions import ConfigError
from datagraph.executors.celery import CeleryExecutor
from datagraph.flows_store import list_flows, save_flow
from datagraph.settings import Settings
from datagraph.store import keys
from datagraph.telemetry import Telemetry

pytestmark = [pytest.mark.anyio, pytest.mark.stores]

ns_double = Processor("ns_double", ["ns_in"], ["ns_out"])


@ns_double
async def _ns_double(ns_in: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in ns_in:
        yield IOVal("ns_out", 2 * x)


@dataclass
class Seen:
    processors: set[str]
    workers: set[str]
    runs: set[str]
    flows: set[str]


async def _run_in(namespace: str, valkey_url: str, flow_name: str) -> tuple[str, str]:
    """Attach in ``namespace``, run a flow, save one; returns (run id, worker id)."""
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"t", namespace=namespace
    )
    try:
        flow = Flow.from_processors(ns_double).resolve()
        out = await supervisor.start_flow(flow, [IOVal("ns_in", 1), IOVal("ns_in", 2)])
        assert await out["ns_out"].collect() == [2, 4]
        run_id = out["ns_out"].run_id
        assert await supervisor.wait(run_id, timeout=10) == "succeeded"
        runtime = await supervisor.runtime()
        await save_flow(runtime.client, flow_name, [ns_double])
        return run_id, supervisor.worker_id
    finally:
        await Supervisor.adetach()


async def _seen(namespace: str, valkey_url: str) -> Seen:
    async with await Telemetry.connect(valkey_url, Settings.from_env(namespace=namespace)) as telemetry:
        flows = {f.name for f in await list_flows(telemetry.client)}
        return Seen(
            processors={p.name for p in await telemetry.processors()},
            workers={w.id for w in await telemetry.workers()},
            runs={r.id for r in await telemetry.runs(limit=1000)},
            flows=flows,
        )


async def test_two_namespaces_on_one_store_never_see_each_other(valkey_url: str) -> None:
    Supervisor.detach()
    run_a, worker_a = await _run_in("team-a", valkey_url, "flow-a")
    run_b, worker_b = await _run_in("team-b", valkey_url, "flow-b")
    try:
        seen_a = await _seen("team-a", valkey_url)
        seen_b = await _seen("team-b", valkey_url)
        seen_default = await _seen(keys.DEFAULT_NAMESPACE, valkey_url)
        seen_unused = await _seen("team-unused", valkey_url)
    finally:
        keys.use_namespace(keys.DEFAULT_NAMESPACE)
    assert run_a in seen_a.runs and run_b not in seen_a.runs
    assert run_b in seen_b.runs and run_a not in seen_b.runs
    assert worker_a in seen_a.workers and worker_b not in seen_a.workers
    assert worker_b in seen_b.workers and worker_a not in seen_b.workers
    assert seen_a.flows == {"flow-a"} and seen_b.flows == {"flow-b"}
    assert "ns_double" in seen_a.processors and "ns_double" in seen_b.processors
    assert seen_unused == Seen(set(), set(), set(), set())
    assert not ({run_a, run_b} & seen_default.runs)
    assert not ({worker_a, worker_b} & seen_default.workers)
    assert not ({"flow-a", "flow-b"} & seen_default.flows)
    # `datagraph status` reads the namespace from DATAGRAPH_NAMESPACE.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAGRAPH_")}
    env["DATAGRAPH_NAMESPACE"] = "team-b"
    status = await anyio.run_process(
        [sys.executable, "-m", "datagraph", "status", "--json", "--redis-url", valkey_url], env=env
    )
    listed = {r["id"] for r in json.loads(status.stdout)["runs"]}
    assert run_b in listed and run_a not in listed


async def test_keys_and_celery_queues_carry_the_namespace(valkey_url: str) -> None:
    Supervisor.detach()
    assert CeleryExecutor.queue_name("p") == "datagraph.p"  # the default namespace: as before
    supervisor = Supervisor.attach(redis_config={"url": valkey_url}, secret=b"t", namespace="staging")
    try:
        assert keys.RUNS == "staging:runs"
        assert keys.stream("r1", "x") == "staging:{r1}:io:x"
        assert keys.worker("w") == "staging:worker:w"
        assert CeleryExecutor.queue_name("p") == "datagraph.staging.p"
        with pytest.raises(ConfigError, match="one process reads and writes one namespace"):
            await Telemetry.connect(valkey_url, Settings.from_env(namespace="production"))
    finally:
        await supervisor.adetach()
    assert keys.RUNS == "dg:runs"


def test_a_bad_namespace_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"namespace 'a:b' is not valid: use 1 to 64 letters"):
        Settings.from_env(namespace="a:b")
    monkeypatch.setenv("DATAGRAPH_NAMESPACE", "{x}")
    with pytest.raises(ConfigError, match="namespace"):
        Settings.from_env()
    monkeypatch.setenv("DATAGRAPH_NAMESPACE", "prod")
    assert Settings.from_env().namespace == "prod"
