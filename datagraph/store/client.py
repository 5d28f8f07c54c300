"""Connections to Valkey through valkey-glide.

``redis_config`` keeps the seed's vocabulary (``{"url": "redis://..."}``, or
``host``/``port``/``db``/``username``/``password``/``tls``) and is mapped onto
glide's configuration here.  Glide multiplexes one connection per client, so
a blocking ``XREAD`` would stall every other command on its client: blocking
readers lease a client of their own from :class:`BlockingPool`.
"""

from __future__ import annotations

import logging
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import anyio.to_thread
from glide import (
    AdvancedGlideClientConfiguration,
    Batch,
    GlideClient,
    GlideClientConfiguration,
    NodeAddress,
    ServerCredentials,
)
from glide import (
    ClosingError as GlideClosingError,
)
from glide import (
    ConnectionError as GlideConnectionError,
)
from glide import (
    GlideError as GlideBaseError,
)
from glide import (
    TimeoutError as GlideTimeoutError,
)

from ..exceptions import ConfigError, StoreError

__all__ = [
    "BlockingPool",
    "StoreAddress",
    "close_now",
    "connect",
    "is_transient",
    "parse_redis_config",
    "pipeline",
    "refused",
]

#: Failures that a reconnect may cure: the command may or may not have run.
TRANSIENT = (GlideTimeoutError, GlideConnectionError)


def is_transient(exc: BaseException) -> bool:
    """A lost connection, a timeout, or a server still loading its data after a restart."""
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, GlideBaseError) and "LOADING" in str(exc)


log = logging.getLogger("datagraph.store")

_SCHEMES = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}
_CONFIG_KEYS = {"url", "host", "port", "db", "username", "password", "tls", "ssl", "client_name"}


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
    return StoreAddress(**fields)


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
    return fields


async def connect(address: StoreAddress, *, request_timeout: float, connect_timeout: float) -> GlideClient:
    """Open a glide client, or raise :class:`StoreError` naming the address."""
    credentials = None
    if address.password is not None or address.username is not None:
        credentials = ServerCredentials(password=address.password or "", username=address.username)
    config = GlideClientConfiguration(
        [NodeAddress(address.host, address.port)],
        use_tls=address.tls,
        credentials=credentials,
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
        self._idle: list[GlideClient] = []
        self._all: list[GlideClient] = []
        # False until a connection succeeds, and again after one fails or is discarded.
        self._serving = False
        self._probing = anyio.Lock()

    def full(self) -> bool:
        """No idle client and the pool at its cap: the caller should poll instead of blocking."""
        return not self._idle and len(self._all) + self._opening >= self._max_clients

    async def acquire(self, owner: object) -> tuple[GlideClient, Callable[[], None]]:
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
        address = self._address
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

    def _give_back(self, client: GlideClient) -> None:
        if client in self._all:
            self._idle.append(client)

    def discard(self, client: GlideClient) -> None:
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
    """Raise ``OSError`` unless the server accepts a connection and answers (blocking)."""
    with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
        if address.tls:
            return  # the TLS handshake is glide's to do: accepting is enough here
        sock.sendall(b"PING\r\n")
        reply = sock.recv(64)  # any reply (+PONG, -NOAUTH ...) means it serves, but:
        if not reply:
            raise ConnectionResetError("the server closed the connection without answering")
        if reply.startswith(b"-LOADING"):
            raise ConnectionRefusedError("the server is still loading its dataset")


def close_now(client: GlideClient) -> None:
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


async def _close_quietly(client: GlideClient) -> None:
    try:
        with anyio.CancelScope(shield=True):
            await client.close()
    except GlideClosingError:
        pass
    except GlideBaseError as exc:  # the connection is going away either way
        log.debug("closing a store client failed: %s", exc)


async def pipeline(
    client: GlideClient,
    commands: list[list[Any]],
    *,
    retry_for: float,
    doing: str,
    atomic: bool = False,
) -> tuple[list[Any], int]:
    """Send ``commands`` as one pipeline; returns ``(results, attempts)``.

    ``atomic=True`` sends them as a transaction (MULTI/EXEC; every key in one
    slot): a reader blocked on a stream is then woken once, after all of them,
    instead of after the first.

    A command's error comes back in its result slot (so callers can tell an
    expected error from a real one).  A lost connection is retried with the
    *same* commands for ``retry_for`` seconds, so the commands must be safe to
    run twice (explicit stream ids, absolute counters); ``attempts > 1`` tells
    the caller that some may have run already.
    """
    attempts = 0
    deadline = None
    delay = 0.05
    while True:
        attempts += 1
        batch = Batch(is_atomic=atomic)
        for command in commands:
            batch.custom_command(command)
        try:
            result = await client.exec(batch, raise_on_error=False)
        except GlideBaseError as exc:
            now = anyio.current_time()
            if deadline is None:
                deadline = now + retry_for
            if not is_transient(exc) or now >= deadline:
                raise StoreError(f"Valkey failed while {doing}: {exc}") from exc
            log.warning("Valkey connection lost while %s (%s); retrying", doing, exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        if result is None:  # only a WATCHed transaction returns None
            raise StoreError(f"Valkey aborted the pipeline while {doing}")
        return list(result), attempts


def refused(replies: list[Any], doing: str) -> None:
    """Raise :class:`StoreError` for the first command of a pipeline that Valkey refused."""
    for reply in replies:
        if isinstance(reply, GlideBaseError):
            raise StoreError(f"Valkey refused a command while {doing}: {reply}")
