"""Connections to Valkey through valkey-glide.

``redis_config`` keeps the seed's vocabulary (``{"url": "redis://..."}``, or
``host``/``port``/``db``/``username``/``password``/``tls``/``cluster``) and is
mapped onto glide's configuration here.  Glide multiplexes one connection per
client, so a blocking ``XREAD`` would stall every other command on its client:
blocking readers lease a client of their own from :class:`BlockingPool`.

The URL of any node of a Valkey Cluster works: :func:`connect` asks the node
(``INFO cluster``) and opens glide's cluster client when it is one;
``redis_config={"cluster": True | False}`` (or ``DATAGRAPH_REDIS_CLUSTER``)
skips the question.  Sending several commands at once, on either kind of
client, is :mod:`datagraph.store.batch`'s (re-exported here).
"""

from __future__ import annotations

import logging
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import anyio.to_thread
from glide import (
    AdvancedGlideClientConfiguration,
    AdvancedGlideClusterClientConfiguration,
    GlideClient,
    GlideClientConfiguration,
    GlideClusterClient,
    GlideClusterClientConfiguration,
    NodeAddress,
    ServerCredentials,
)
from glide import (
    ClosingError as GlideClosingError,
)
from glide import (
    GlideError as GlideBaseError,
)

from ..exceptions import ConfigError, StoreError
from .batch import (
    Reconnecting,
    Store,
    StoreBatch,
    describe,
    exec_batch,
    is_cluster,
    is_transient,
    new_batch,
    pipeline,
    refused,
)

__all__ = [
    "BlockingPool",
    "Reconnecting",
    "Store",
    "StoreAddress",
    "StoreBatch",
    "close_now",
    "connect",
    "describe",
    "exec_batch",
    "is_cluster",
    "is_transient",
    "new_batch",
    "parse_redis_config",
    "pipeline",
    "reply_text",
    "refused",
    "store_is_cluster",
]

log = logging.getLogger("datagraph.store")

_SCHEMES = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}
_CONFIG_KEYS = {"url", "host", "port", "db", "username", "password", "tls", "ssl", "client_name", "cluster"}


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """Where the store is and how to log in."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    client_name: str | None = None
    #: A Valkey Cluster (True), a standalone server (False), or ask the server (None).
    cluster: bool | None = None
    #: Every node of the cluster as first seen, so that a client opened after
    #: the first node died still finds the others.
    seeds: tuple[tuple[str, int], ...] = ()

    @property
    def url(self) -> str:
        """The address as a URL, without the password."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"

    def url_with_password(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}:{self.password or ''}@"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}"


def parse_redis_config(config: Mapping[str, Any]) -> StoreAddress:
    """Turn a ``redis_config`` mapping into a :class:`StoreAddress`."""
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown redis_config key(s) {', '.join(map(repr, unknown))}; "
            f"use {', '.join(sorted(_CONFIG_KEYS))}"
        )
    fields: dict[str, Any] = {}
    url = config.get("url")
    if url is not None:
        fields.update(_parse_url(str(url)))
    for key in ("host", "username", "password", "client_name"):
        if config.get(key) is not None:
            fields[key] = str(config[key])
    for key in ("port", "db"):
        if config.get(key) is not None:
            try:
                fields[key] = int(config[key])
            except (TypeError, ValueError):
                raise ConfigError(f"redis_config {key!r} must be an integer, got {config[key]!r}") from None
    tls = config.get("tls", config.get("ssl"))
    if tls is not None:
        fields["tls"] = bool(tls)
    cluster = config.get("cluster", fields.get("cluster"))
    if cluster is None:
        from ..settings import redis_cluster_from_env

        cluster = redis_cluster_from_env()
    if cluster is not None and not isinstance(cluster, bool):
        raise ConfigError(
            f"redis_config 'cluster' must be True (a Valkey Cluster), False (a standalone server) "
            f"or None (detect), got {cluster!r}"
        )
    fields["cluster"] = cluster
    if cluster and fields.get("db"):
        raise ConfigError(_CLUSTER_DB.format(db=fields["db"]))
    return StoreAddress(**fields)


_CLUSTER_DB = (
    "redis_config selects database {db}, but a Valkey Cluster has only database 0; "
    "use /0 in the URL and keep deployments apart with the 'namespace' setting (DATAGRAPH_NAMESPACE)"
)


def _parse_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"redis_config url {url!r} has scheme {parts.scheme!r}; "
            "use redis://, rediss://, valkey:// or valkeys://"
        )
    fields: dict[str, Any] = {"tls": _SCHEMES[parts.scheme]}
    try:
        if parts.hostname:
            fields["host"] = parts.hostname
        if parts.port:
            fields["port"] = parts.port
    except ValueError as exc:
        raise ConfigError(f"redis_config url {url!r} is not valid: {exc}") from None
    if parts.username:
        fields["username"] = unquote(parts.username)
    if parts.password:
        fields["password"] = unquote(parts.password)
    path = parts.path.strip("/")
    query = parse_qs(parts.query)
    db = path or next(iter(query.get("db", [])), "")
    if db:
        try:
            fields["db"] = int(db)
        except ValueError:
            raise ConfigError(f"redis_config url {url!r}: database {db!r} is not a number") from None
    cluster = next(iter(query.get("cluster", [])), None)
    if cluster is not None:
        if cluster.lower() not in {"true", "false", "yes", "no", "1", "0"}:
            raise ConfigError(f"redis_config url {url!r}: cluster={cluster!r} must be true or false")
        fields["cluster"] = cluster.lower() in {"true", "yes", "1"}
    return fields


#: What :func:`connect` learnt about an address: its mode and the cluster's nodes.
_resolved: dict[StoreAddress, StoreAddress] = {}


async def connect(address: StoreAddress, *, request_timeout: float, connect_timeout: float) -> Store:
    """Open a glide client (a cluster client on a cluster); :class:`StoreError` names the address."""
    known = _resolved.get(address, address)
    if known.cluster is False:
        return await _connect_standalone(known, request_timeout, connect_timeout)
    if known.cluster is None:
        # Ask the node.  A standalone server keeps this client; a cluster node gives its peers.
        try:
            # Database 0: a cluster node refuses to SELECT another, and says so only by timing out.
            client = await _connect_standalone(replace(known, db=0), request_timeout, connect_timeout)
        except StoreError as exc:
            if "No primary node found" not in str(exc):
                raise
            # A replica: glide's standalone client wants a primary, so it can only be a cluster's.
            known = replace(known, cluster=True)
            if known.db:
                raise ConfigError(_CLUSTER_DB.format(db=known.db)) from exc
            cluster = await _connect_cluster(known, request_timeout, connect_timeout)
            try:
                nodes = reply_text(await cluster.custom_command(["CLUSTER", "NODES"]))
            except GlideBaseError as error:
                await _close_quietly(cluster)
                raise StoreError(
                    f"cannot list the nodes of the Valkey Cluster at {address.url}: {error}"
                ) from error
            _resolved[address] = replace(known, seeds=_node_addresses(nodes, known))
            return cluster
        try:
            info = reply_text(await client.custom_command(["INFO", "cluster"]))
            if "cluster_enabled:1" not in info:
                known = _resolved[address] = replace(known, cluster=False)
                if not known.db:
                    return client
                await _close_quietly(client)
                return await _connect_standalone(known, request_timeout, connect_timeout)
            nodes = reply_text(await client.custom_command(["CLUSTER", "NODES"]))
        except GlideBaseError as exc:
            await _close_quietly(client)
            raise StoreError(f"cannot tell whether Valkey at {address.url} is a cluster node: {exc}") from exc
        await _close_quietly(client)
        known = replace(known, cluster=True, seeds=_node_addresses(nodes, known))
        if known.db:
            raise ConfigError(_CLUSTER_DB.format(db=known.db))
        _resolved[address] = known
    return await _connect_cluster(known, request_timeout, connect_timeout)


async def store_is_cluster(address: StoreAddress, *, connect_timeout: float) -> bool:
    """Whether ``address`` is a node of a Valkey Cluster (connects once to ask)."""
    client = await connect(address, request_timeout=connect_timeout, connect_timeout=connect_timeout)
    try:
        return is_cluster(client)
    finally:
        await _close_quietly(client)


def reply_text(reply: Any) -> str:
    """A reply (bytes or not) as text."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _node_addresses(nodes: str, address: StoreAddress) -> tuple[tuple[str, int], ...]:
    """``(host, port)`` of every node that ``CLUSTER NODES`` lists as connected."""
    found = [(address.host, address.port)]
    for line in nodes.splitlines():
        parts = line.split()
        if len(parts) < 8 or "fail" in parts[2].split(",") or parts[7] != "connected":
            continue
        host_port = parts[1].split("@")[0].split(",")[0]
        host, _, port = host_port.rpartition(":")
        if host and port.isdigit() and (host, int(port)) not in found:
            found.append((host, int(port)))
    return tuple(found)


def _credentials(address: StoreAddress) -> ServerCredentials | None:
    if address.password is None and address.username is None:
        return None
    return ServerCredentials(password=address.password or "", username=address.username)


async def _connect_cluster(address: StoreAddress, request_timeout: float, connect_timeout: float) -> Store:
    seeds = address.seeds or ((address.host, address.port),)
    config = GlideClusterClientConfiguration(
        [NodeAddress(host, port) for host, port in seeds],
        use_tls=address.tls,
        credentials=_credentials(address),
        request_timeout=int(request_timeout * 1000),
        client_name=address.client_name,
        advanced_config=AdvancedGlideClusterClientConfiguration(
            connection_timeout=int(connect_timeout * 1000)
        ),
    )
    try:
        return await GlideClusterClient.create(config)
    except GlideBaseError as exc:
        raise StoreError(
            f"cannot connect to the Valkey Cluster at {address.url}: {exc}. Are the nodes running, "
            "is it a cluster (redis_config 'cluster' / DATAGRAPH_REDIS_CLUSTER force the mode), "
            "and are redis_config / DATAGRAPH_REDIS_URL right?"
        ) from exc


async def _connect_standalone(
    address: StoreAddress, request_timeout: float, connect_timeout: float
) -> GlideClient:
    config = GlideClientConfiguration(
        [NodeAddress(address.host, address.port)],
        use_tls=address.tls,
        credentials=_credentials(address),
        database_id=address.db or None,
        request_timeout=int(request_timeout * 1000),
        client_name=address.client_name,
        advanced_config=AdvancedGlideClientConfiguration(connection_timeout=int(connect_timeout * 1000)),
    )
    try:
        return await GlideClient.create(config)
    except GlideBaseError as exc:
        raise StoreError(
            f"cannot connect to Valkey at {address.url}: {exc}. Is the server running, "
            "and are redis_config / DATAGRAPH_REDIS_URL right?"
        ) from exc


class BlockingPool:
    """Clients reserved for blocking reads: each reader holds one while it reads.

    A reader returns its client with the ``release`` callable it is given;
    if the reader is dropped without that, the client goes back to the pool
    when the reader is garbage collected.  Every client is closed with the pool.
    """

    def __init__(
        self, address: StoreAddress, *, block: float, connect_timeout: float, max_clients: int = 256
    ) -> None:
        # Each glide client holds several file descriptors and one Valkey connection:
        # past ``max_clients`` concurrent readers, further readers poll (see StreamReader).
        self._max_clients = max_clients
        self._opening = 0
        self._address = address
        self._request_timeout = block + max(5.0, block)
        self._connect_timeout = connect_timeout
        self._idle: list[Store] = []
        self._all: list[Store] = []
        # False until a connection succeeds, and again after one fails or is discarded.
        self._serving = False
        self._probing = anyio.Lock()

    def full(self) -> bool:
        """No idle client and the pool at its cap: the caller should poll instead of blocking."""
        return not self._idle and len(self._all) + self._opening >= self._max_clients

    async def acquire(self, owner: object) -> tuple[Store, Callable[[], None]]:
        if self._idle:
            client = self._idle.pop()
        else:
            self._opening += 1  # counted at once, so concurrent callers see the pool filling
            try:
                if not self._serving:
                    await self._wait_until_serving()
                client = await connect(
                    self._address,
                    request_timeout=self._request_timeout,
                    connect_timeout=self._connect_timeout,
                )
            except StoreError:
                self._serving = False
                raise
            finally:
                self._opening -= 1
            self._serving = True
            self._all.append(client)
        finalizer = weakref.finalize(owner, self._give_back, client)
        return client, finalizer

    async def _wait_until_serving(self) -> None:
        """Wait, without blocking the event loop, until the store answers (``connect_timeout`` at most).

        ``GlideClient.create`` blocks the whole event loop until it has connected
        or its connection timeout expires.  While Valkey restarts, every reader
        reconnecting at once would freeze the process (heartbeats included) for
        ``connect_timeout`` each, one after the other.  So after a failure, one
        reader at a time probes the server asynchronously first; a store that
        comes back within the timeout is simply waited for, and the readers
        queued behind a successful probe connect straight away.
        """
        async with self._probing:
            if not self._serving:
                await self._probe()
                self._serving = True

    async def _probe(self) -> None:
        # In a thread, so that a busy event loop cannot make a healthy store look dead.
        address = _resolved.get(self._address, self._address)
        deadline = time.monotonic() + self._connect_timeout
        delay = 0.02
        while True:
            try:
                left = max(0.01, deadline - time.monotonic())
                await anyio.to_thread.run_sync(_ping, address, left, abandon_on_cancel=True)
                return
            except OSError as exc:
                if time.monotonic() + delay >= deadline:
                    raise StoreError(
                        f"cannot connect to Valkey at {address.url}: {exc or type(exc).__name__}. "
                        "Is the server running, and are redis_config / DATAGRAPH_REDIS_URL right?"
                    ) from exc
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _give_back(self, client: Store) -> None:
        if client in self._all:
            self._idle.append(client)

    def discard(self, client: Store) -> None:
        """Close a client that may still have a reply in flight instead of reusing it."""
        self._serving = False  # the next new client checks that the store answers first
        if client in self._all:
            self._all.remove(client)
            close_now(client)

    async def aclose(self) -> None:
        clients, self._all, self._idle = self._all, [], []
        for client in clients:
            await _close_quietly(client)

    def close_now(self) -> None:
        clients, self._all, self._idle = self._all, [], []
        for client in clients:
            close_now(client)


def _ping(address: StoreAddress, timeout: float) -> None:
    """Raise ``OSError`` unless the server (on a cluster: any node) accepts a connection and answers."""
    nodes = address.seeds or ((address.host, address.port),)
    error: OSError | None = None
    for host, port in nodes:
        try:
            _ping_node(host, port, address.tls, timeout / len(nodes))
            return
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


def _ping_node(host: str, port: int, tls: bool, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if tls:
            return  # the TLS handshake is glide's to do: accepting is enough here
        sock.sendall(b"PING\r\n")
        reply = sock.recv(64)  # any reply (+PONG, -NOAUTH ...) means it serves, but:
        if not reply:
            raise ConnectionResetError("the server closed the connection without answering")
        if reply.startswith(b"-LOADING"):
            raise ConnectionRefusedError("the server is still loading its dataset")


def close_now(client: Store) -> None:
    """Close a client from synchronous code (e.g. when its event loop is ending).

    ``GlideClient.close()`` is a coroutine that never suspends, so it can be
    driven to completion without a running loop.
    """
    coro = client.close()
    try:
        coro.send(None)
    except StopIteration:
        return
    except GlideBaseError as exc:
        log.debug("closing a store client failed: %s", exc)
        return
    coro.close()
    raise RuntimeError("GlideClient.close() suspended; it cannot be closed synchronously")


async def _close_quietly(client: Store) -> None:
    try:
        with anyio.CancelScope(shield=True):
            await client.close()
    except GlideClosingError:
        pass
    except GlideBaseError as exc:  # the connection is going away either way
        log.debug("closing a store client failed: %s", exc)
