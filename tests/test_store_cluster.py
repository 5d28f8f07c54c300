"""Connecting to a Valkey Cluster with one URL: detection, the override, and clear errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from glide import GlideClient, GlideClusterClient

from datagraph import Flow, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.embedded_cluster import EmbeddedCluster, command
from datagraph.exceptions import ConfigError, DatagraphError, StoreError
from datagraph.store import keys
from datagraph.store.client import (
    StoreBatch,
    connect,
    exec_batch,
    is_cluster,
    new_batch,
    parse_redis_config,
    pipeline,
)

pytestmark = pytest.mark.anyio


def _url(port: int, *, query: str = "") -> str:
    return f"redis://127.0.0.1:{port}/0{query}"


async def _open(url: str, **config: object) -> GlideClient | GlideClusterClient:
    return await connect(parse_redis_config({"url": url, **config}), request_timeout=5, connect_timeout=5)


async def test_any_node_url_opens_a_cluster_client(
    valkey_cluster: EmbeddedCluster, anyio_backend: str
) -> None:
    for node in valkey_cluster.nodes:  # primaries and replicas alike
        client = await _open(_url(node.port))
        try:
            assert isinstance(client, GlideClusterClient)
            # Keys of many runs land on every shard: each command reaches its slot's primary.
            batch = new_batch(client)
            for i in range(30):
                batch.custom_command(["SET", f"{{probe-{node.port}-{i}}}", str(i)])
            for i in range(30):
                batch.custom_command(["GET", f"{{probe-{node.port}-{i}}}"])
            replies = await exec_batch(client, batch, raise_on_error=True)
            assert replies[30:] == [str(i).encode() for i in range(30)]
        finally:
            await client.close()


async def test_a_standalone_url_opens_a_standalone_client(valkey_server: object, anyio_backend: str) -> None:
    client = await _open(_url(valkey_server.port))  # type: ignore[attr-defined]
    try:
        assert isinstance(client, GlideClient)
    finally:
        await client.close()


async def test_the_override_skips_detection(
    valkey_cluster: EmbeddedCluster,
    valkey_server: object,
    anyio_backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = valkey_cluster.nodes[0].port
    # Forced standalone on a cluster node: commands for other shards are refused, by name.
    client = await _open(_url(port), cluster=False)
    try:
        assert isinstance(client, GlideClient)
        with pytest.raises(StoreError, match=r"Valkey failed while probing: .*Moved: \d+"):
            commands = [["SET", f"{{k{i}}}", "v"] for i in range(20)]
            await pipeline(client, commands, retry_for=1, doing="probing")
    finally:
        await client.close()
    monkeypatch.setenv("DATAGRAPH_REDIS_CLUSTER", "true")
    client = await _open(_url(port))
    try:
        assert isinstance(client, GlideClusterClient)
    finally:
        await client.close()
    standalone = _url(valkey_server.port)  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match=r"cannot connect to the Valkey Cluster at .*REDIS_CLUSTER"):
        await _open(standalone, cluster=True)
    monkeypatch.setenv("DATAGRAPH_REDIS_CLUSTER", "sometimes")
    with pytest.raises(ConfigError, match=r"DATAGRAPH_REDIS_CLUSTER='sometimes' is not valid: use true"):
        await _open(standalone)


def test_cluster_settings_are_checked() -> None:
    assert parse_redis_config({"url": "redis://h:1/0?cluster=true"}).cluster is True
    assert parse_redis_config({"url": "redis://h:1/0", "cluster": False}).cluster is False
    assert parse_redis_config({"url": "redis://h:1/0"}).cluster is None
    with pytest.raises(ConfigError, match="only database 0"):
        parse_redis_config({"url": "redis://h:1/3", "cluster": True})
    with pytest.raises(ConfigError, match="'cluster' must be True"):
        parse_redis_config({"url": "redis://h:1/0", "cluster": "yes"})
    with pytest.raises(ConfigError, match="cluster='maybe' must be true or false"):
        parse_redis_config({"url": "redis://h:1/0?cluster=maybe"})


async def test_a_database_other_than_0_on_a_cluster_is_named(
    valkey_cluster: EmbeddedCluster, anyio_backend: str
) -> None:
    with pytest.raises(ConfigError, match=r"only database 0.*namespace"):
        await _open(f"redis://127.0.0.1:{valkey_cluster.nodes[1].port}/2")


async def test_runs_spread_over_every_shard(valkey_cluster: EmbeddedCluster, anyio_backend: str) -> None:
    gen = Processor("spread_gen", ["spread_n"], ["spread_out"])

    @gen
    async def _gen(spread_n):  # type: ignore[no-untyped-def]
        for i in range(await spread_n.first()):
            yield IOVal("spread_out", i)

    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_cluster.url}, executor=LocalExecutor(), secret=b"t", namespace="spread"
    )
    try:
        flow = Flow.from_processors(gen).resolve()
        run_ids = []
        for _ in range(30):
            out = await supervisor.start_flow(flow, [IOVal("spread_n", 3)])
            assert await out["spread_out"].collect() == [0, 1, 2]
            run_ids.append(out["spread_out"].run_id)
            assert await supervisor.wait(run_ids[-1], timeout=10) == "succeeded"
        node = valkey_cluster.nodes[0]
        ranges = node.command("CLUSTER", "SLOTS")  # [[first, last, [host, port, id], ...], ...]
        shards = set()
        for run_id in run_ids:
            slot = node.command("CLUSTER", "KEYSLOT", keys.run(run_id))
            owner = next(r[2][1] for r in ranges if r[0] <= slot <= r[1])
            assert command("127.0.0.1", owner, "EXISTS", keys.run(run_id)) == 1
            shards.add(owner)
        assert len(shards) == 3
    finally:
        await Supervisor.adetach()


def test_errors_derive_from_datagraph_error() -> None:
    assert issubclass(StoreError, DatagraphError)


async def test_an_acl_user_logs_in_on_every_node(valkey_cluster: EmbeddedCluster, anyio_backend: str) -> None:
    for node in valkey_cluster.nodes:  # ACL users are per node: create it everywhere, as an operator would
        node.command("ACL", "SETUSER", "dg-acl", "on", ">s3cret", "~*", "&*", "+@all")
    url = f"redis://dg-acl:s3cret@127.0.0.1:{valkey_cluster.nodes[2].port}/0"
    client = await _open(url)
    try:
        assert isinstance(client, GlideClusterClient)
        assert await client.custom_command(["ACL", "WHOAMI"]) == b"dg-acl"
    finally:
        await client.close()
    with pytest.raises(StoreError, match="cannot connect"):
        await _open(f"redis://dg-acl:wrong@127.0.0.1:{valkey_cluster.nodes[2].port}/0")


@pytest.mark.stores
async def test_batches_mix_slots_and_keep_reply_order(valkey_url: str, anyio_backend: str) -> None:
    client = await _open(valkey_url)
    try:
        assert await exec_batch(client, new_batch(client), raise_on_error=True) == []
        batch = new_batch(client)
        tag = uuid.uuid4().hex
        for i in range(12):  # twelve slots: every shard of a cluster
            batch.custom_command(["SET", f"b:{{{tag}-{i}}}", str(i)])
        batch.custom_command(["HSET", f"b:{{{tag}-0}}", "f", "v"])  # WRONGTYPE: an error in its slot
        for i in range(12):
            batch.custom_command(["GET", f"b:{{{tag}-{i}}}"])
        replies = await exec_batch(client, batch, raise_on_error=False)
        assert replies[:12] == ["OK"] * 12
        assert "WRONGTYPE" in str(replies[12])
        assert replies[13:] == [str(i).encode() for i in range(12)]
        with pytest.raises(Exception, match="WRONGTYPE"):
            await exec_batch(client, batch, raise_on_error=True)
        other = StoreBatch(cluster=not is_cluster(client))
        with pytest.raises(TypeError, match="new_batch"):
            await exec_batch(client, other, raise_on_error=True)
    finally:
        await client.close()


@pytest.mark.parametrize("cluster", [False, True])
@pytest.mark.parametrize("atomic", [False, True])
def test_glide_batches_are_built_as_custom_command_builds_them(cluster: bool, atomic: bool) -> None:
    """The store layer fills glide's batch in one go: the same commands, kinds and atomicity."""
    from glide import Batch, ClusterBatch

    from datagraph.store.batch import glide_batch

    commands: list[list[Any]] = [["SET", "k", "1"], ["XADD", "s", "0-1", "b", b"\x00"], ["PING"]]
    expected = ClusterBatch(is_atomic=atomic) if cluster else Batch(is_atomic=atomic)
    for each in commands:
        expected.custom_command(each)
    built = glide_batch(commands, cluster=cluster, atomic=atomic)
    assert type(built) is type(expected)
    assert built.is_atomic == atomic
    assert built.commands == expected.commands
