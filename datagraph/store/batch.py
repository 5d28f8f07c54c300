"""Sending several commands at once, on a standalone Valkey or a Valkey Cluster.

The contract for code that writes to the store:

- build commands with :func:`new_batch` and send them with :func:`exec_batch`
  (one round trip per node); a batch is **non-atomic** and may mix slots (a
  run's keys with the global keys), but no single command may span slots;
- :func:`pipeline` sends a list of commands the same way and retries a lost
  connection for ``retry_for`` seconds, so its commands must be safe to run
  twice; ``attempts > 1`` in its result says some may have run already;
- on a cluster, commands a failover refused without running them (``Moved``,
  ``ClusterDown``, ``TryAgain``) are sent again until the cluster settles.
"""

from __future__ import annotations

import logging
import time
from typing import Any, TypeAlias

import anyio
from glide import (
    Batch,
    ClusterBatch,
    GlideClient,
    GlideClusterClient,
    RequestError,
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
from glide_shared.protobuf.command_request_pb2 import RequestType

from ..exceptions import StoreError
from .evalsha import is_own_script, is_unknown_script, with_script_text

__all__ = [
    "SETTLE_TIMEOUT",
    "Reconnecting",
    "TRANSIENT",
    "Store",
    "StoreBatch",
    "describe",
    "exec_batch",
    "is_cluster",
    "is_transient",
    "new_batch",
    "pipeline",
    "refused",
]

log = logging.getLogger("datagraph.store")

#: A connection to the store: a standalone server or a Valkey Cluster.
Store: TypeAlias = GlideClient | GlideClusterClient

#: Failures that a reconnect may cure: the command may or may not have run.
TRANSIENT = (GlideTimeoutError, GlideConnectionError)
#: Replies of a server restarting, or of a cluster moving a shard to a replica
#: (failover): the same command succeeds once the cluster has settled.  Glide
#: reports a redirection it did not follow as "Moved: <slot> <node>", and a
#: connection to a killed node as a broken pipe.  Compared in lower case.
_TRANSIENT_REPLIES = (
    "loading", "clusterdown", "trying again", "tryagain", "masterdown", "readonly", "moved:",
    "brokenpipe", "failed to receive command response", "connection not found",
)


#: What valkey-glide says of an error it was given no text for.
_NO_MESSAGE = "No error message provided"


def describe(exc: BaseException) -> str:
    """``exc``'s text for a message of ours; its type's name when the client gave no text."""
    text = str(exc)
    if not text or text == _NO_MESSAGE:
        return f"{type(exc).__name__} (the store client gave no detail)"
    return text


class Reconnecting:
    """Waits between attempts to reach the store after a lost connection: from 0.05 s,
    doubling up to 1 s, for ``limit`` seconds from the first failure (a pipeline's
    retries, a reader's reconnections)."""

    __slots__ = ("_deadline", "_delay", "_limit")

    def __init__(self, limit: float) -> None:
        self._limit = limit
        self._deadline: float | None = None
        self._delay = 0.05

    def expired(self) -> bool:
        """Whether to give up now (the first failure starts the clock)."""
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._limit
        return now >= self._deadline

    async def wait(self) -> None:
        await anyio.sleep(self._delay)
        self._delay = min(self._delay * 2, 1.0)


def is_transient(exc: BaseException) -> bool:
    """A lost connection, a timeout, a server still loading its data, a cluster failing over."""
    if isinstance(exc, TRANSIENT):
        return True
    if not isinstance(exc, GlideBaseError):
        return False
    text = str(exc).lower()  # glide spells server errors its own way ("ClusterDown", "Moved")
    return any(reply in text for reply in _TRANSIENT_REPLIES)


#: Whether each client class talks to a cluster.  ``isinstance`` against glide's
#: client classes runs ``typing.Protocol``'s Python-level check (about 2 us), and
#: every round trip asks several times.
_CLUSTER_KINDS: dict[type, bool] = {}


def is_cluster(client: Store) -> bool:
    """Whether ``client`` talks to a Valkey Cluster."""
    kind = type(client)
    cluster = _CLUSTER_KINDS.get(kind)
    if cluster is None:
        cluster = _CLUSTER_KINDS[kind] = issubclass(kind, GlideClusterClient)
    return cluster


class StoreBatch:
    """Commands to send at once, without atomicity (see :func:`new_batch`)."""

    __slots__ = ("cluster", "commands")

    def __init__(self, cluster: bool) -> None:
        self.cluster = cluster
        self.commands: list[list[Any]] = []

    def custom_command(self, command: list[Any]) -> StoreBatch:
        self.commands.append(list(command))
        return self

    def __len__(self) -> int:
        return len(self.commands)


def new_batch(client: Store) -> StoreBatch:
    """An empty *non-atomic* batch for ``client``'s kind of store.

    Add commands with ``batch.custom_command([...])`` and send it with
    :func:`exec_batch` (one round trip per node involved).  On a cluster,
    glide splits a non-atomic batch per slot and node and returns the replies
    in command order, so a batch may mix a run's keys with the global keys
    (``keys.RUNS``, ``keys.worker(...)``, ...).  What it may not hold is one
    *command* whose keys span slots (a multi-key ``DEL`` of two workers, an
    ``EVAL`` over keys of two runs): give each slot its own command.
    """
    return StoreBatch(is_cluster(client))


#: Replies that mean the command did not run because the cluster is moving a
#: shard (a failover): safe to send again, whatever the command.
_NOT_RUN = ("moved:", "clusterdown", "tryagain", "trying again", "masterdown")
#: How long :func:`exec_batch` resends such commands before giving their error back, in seconds.
SETTLE_TIMEOUT = 10.0


async def exec_batch(client: Store, batch: StoreBatch, *, raise_on_error: bool) -> list[Any]:
    """Send a batch from :func:`new_batch`; the replies in command order.

    With ``raise_on_error`` the first error reply is raised (a glide
    ``RequestError``); without it, errors come back in their reply slots.  On
    a cluster, commands refused because their shard is failing over (``Moved``
    to a node glide has not learnt of yet, ``ClusterDown``, ``TryAgain``) did
    not run, so they alone are sent again until the cluster settles
    (``SETTLE_TIMEOUT`` at most).  A lost connection is *not* retried here:
    the command may have run; :func:`pipeline` retries idempotent batches.
    """
    if is_cluster(client) != batch.cluster:
        raise TypeError("this batch was built for another kind of client: build it with new_batch(client)")
    replies, _ = await _send_settling(client, batch.commands)
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, GlideBaseError):
                raise reply
    return replies


async def _send_settling(client: Store, commands: list[list[Any]]) -> tuple[list[Any], bool]:
    """Replies, and whether some commands were sent again (see :func:`exec_batch`)."""
    replies = await _send(client, commands)
    resent = False
    if is_cluster(client):
        deadline = None
        delay = 0.02
        while True:
            again = [i for i, r in enumerate(replies) if isinstance(r, GlideBaseError) and _not_run(r)]
            if not again:
                break
            now = anyio.current_time()
            deadline = deadline if deadline is not None else now + SETTLE_TIMEOUT
            if now >= deadline:
                break
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
            resent = True
            for i, reply in zip(again, await _send(client, [commands[i] for i in again]), strict=True):
                replies[i] = reply
    return replies, resent


#: The request type ``Batch.custom_command`` gives a command (read once: each read
#: goes through protobuf's enum wrapper, about 1 us).
CUSTOM_COMMAND: int = RequestType.CustomCommand


def glide_batch(commands: list[list[Any]], *, cluster: bool, atomic: bool = False) -> Batch | ClusterBatch:
    """A glide batch of ``commands``, as ``custom_command`` on each would build it.

    In one list extension: ``custom_command`` looks its request type up in the
    protobuf enum wrapper and takes the batch's lock, per command.
    """
    batch = ClusterBatch(is_atomic=atomic) if cluster else Batch(is_atomic=atomic)
    batch.commands.extend([(CUSTOM_COMMAND, command) for command in commands])
    return batch


def _not_run(error: GlideBaseError) -> bool:
    text = str(error).lower()
    return any(reply in text for reply in _NOT_RUN)


async def _exec(client: Store, commands: list[list[Any]], *, atomic: bool) -> list[Any]:
    """The replies to ``commands``, an error reply in its command's slot."""
    if is_cluster(client):
        cluster_batch = glide_batch(commands, cluster=True, atomic=atomic)
        assert isinstance(cluster_batch, ClusterBatch)
        result = await client.exec(cluster_batch, raise_on_error=False)
    elif len(commands) == 1 and not atomic:
        # One command (a folded flush, datagraph.store.fold) goes as a command: glide
        # builds no batch for it, about a third less of its Python per round trip.
        try:
            return [await client.custom_command(commands[0])]
        except RequestError as exc:
            if type(exc) is not RequestError:
                raise  # lost, timed out, ...: as a batch raises them
            return [exc]  # the server's error reply, where a batch puts it
    else:
        batch = glide_batch(commands, cluster=False, atomic=atomic)
        assert isinstance(batch, Batch)
        result = await client.exec(batch, raise_on_error=False)
    if result is None:  # only a WATCHed transaction returns None
        raise StoreError("Valkey aborted a batch")
    return list(result)


async def _send(client: Store, commands: list[list[Any]], *, atomic: bool = False) -> list[Any]:
    if not commands:
        return []
    replies = await _exec(client, commands, atomic=atomic)
    # Scripts go by their SHA1 (EVALSHA, see store.evalsha.Script); a server that does
    # not have one yet (restarted, failed over, SCRIPT FLUSH) refuses it without running
    # it: those alone go again with the script's text, which also caches it there.
    unknown = [i for i, reply in enumerate(replies) if is_unknown_script(reply, commands[i])]
    if unknown:
        # The scripts after the first refused one go again too, in their order (a Script
        # may run twice): one that reads what a refused one writes (a processor's last
        # history sample, after the script that marks it done) then sees it.
        again_at = [i for i in range(unknown[0], len(commands)) if is_own_script(commands[i])]
        again = [with_script_text(commands[i]) for i in again_at]
        for i, reply in zip(again_at, await _send(client, again), strict=True):
            replies[i] = reply
    return replies


async def pipeline(
    client: Store,
    commands: list[list[Any]],
    *,
    retry_for: float,
    doing: str,
    atomic: bool = False,
) -> tuple[list[Any], int]:
    """Send ``commands`` as one non-atomic pipeline; returns ``(results, attempts)``.

    A command's error comes back in its result slot (so callers can tell an
    expected error from a real one).  A lost connection is retried with the
    *same* commands for ``retry_for`` seconds, so the commands must be safe to
    run twice (explicit stream ids, absolute counters); ``attempts > 1`` tells
    the caller that some may have run already.

    On a Valkey Cluster the commands may mix slots (glide sends each slot's
    share to its node), but no single command may span slots.  A share lost
    to a failover (its replies are connection or ``CLUSTERDOWN`` errors) is
    retried like a lost connection: the whole list again.

    ``atomic=True`` sends them as one transaction (MULTI/EXEC), so every key
    must be in one slot: a reader blocked on a stream is then woken once,
    after all of them, instead of after the first.  A transaction refused by
    a failover did not run, and is sent again whole.
    """
    attempts = 0
    retry: Reconnecting | None = None  # made on the first failure: not on the hot path
    while True:
        attempts += 1
        try:
            if atomic:
                result, resent = await _send(client, commands, atomic=True), False
                if any(isinstance(r, GlideBaseError) and _not_run(r) for r in result):
                    raise next(r for r in result if isinstance(r, GlideBaseError) and _not_run(r))
            else:
                result, resent = await _send_settling(client, commands)
            # Glide may have run a command it also reported as redirected: count it as a retry.
            attempts += resent
            lost = next((r for r in result if isinstance(r, GlideBaseError) and is_transient(r)), None)
            if lost is not None:
                raise lost
        except GlideBaseError as exc:
            retry = retry or Reconnecting(retry_for)
            if not is_transient(exc) or retry.expired():
                raise StoreError(f"Valkey failed while {doing}: {describe(exc)}") from exc
            log.warning("Valkey connection lost while %s (%s); retrying", doing, exc)
            await retry.wait()
            continue
        return result, attempts


def refused(replies: list[Any], doing: str, *, own_entries: bool = False) -> None:
    """Raise :class:`StoreError` for the first command of a pipeline that Valkey refused.

    ``own_entries``: the pipeline's ``XADD``s use explicit ids on streams only
    this pipeline writes, so an id already taken is its own entry, written by
    an earlier send (a cluster failing over may run a command it also reported
    as failed): not a refusal.
    """
    for reply in replies:
        if isinstance(reply, GlideBaseError):
            if own_entries and "equal or smaller" in str(reply):
                continue
            raise StoreError(f"Valkey refused a command while {doing}: {reply}")
