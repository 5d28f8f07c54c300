"""Read positions that wait for a later round trip instead of costing one of their own.

When the caller's reader of a run's output closes (``first()``,
``stream()``, ``collect()``), it has read positions to publish for
telemetry.  No writer waits for them: a writer is held back only by its
in-flow readers (processors), never by the caller.  So instead of a round
trip of its own on the caller's critical path, the reader parks them here,
and they are published, whichever comes first:

- with the next ``XREAD`` any reader of the same runtime sends (its
  pipeline carries them), or
- by the runtime's one publisher task, at most :data:`PUBLISH_DELAY`
  seconds later (all that is parked by then, in one pipeline), and
- at the latest when the runtime closes (``Supervisor.aclose()`` /
  ``adetach()``).

A processor's reader never parks: its positions bound its writers'
backlog, and it hands them to its own writer's next flush
(``StreamWriter.send_with_next_flush``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from .exceptions import StoreError
from .store.batch import is_cluster, pipeline
from .store.fold import fold

if TYPE_CHECKING:
    from ._backend import LoopHost
    from .settings import Settings
    from .store.client import Store

__all__ = ["PUBLISH_DELAY", "Parked", "ParkedPositions"]

#: Longest a parked read position waits for a round trip to ride with, in seconds.
PUBLISH_DELAY = 0.05

#: Most commands a publication sends as one script call on a standalone store: a
#: larger one (a backlog after an outage) goes as a plain pipeline, so that no one
#: script holds the store for long.
FOLD_AT_MOST = 512

#: Fields to set, by hash key (later values win).
Parked = dict[str, dict[str, str]]

log = logging.getLogger("datagraph.parked")


class ParkedPositions:
    """The read positions of one runtime's closed readers that are not published yet."""

    def __init__(self, client: Store, host: LoopHost, settings: Settings) -> None:
        self._client = client
        self._host = host
        self._retry_for = settings.reconnect_timeout
        self._close_timeout = settings.request_timeout
        self._ttl = str(int(settings.max_run_duration))
        self._fields: Parked = {}
        #: Set when something is parked; None until the publisher task is started.
        self._wake: anyio.Event | None = None
        self._lock = anyio.Lock()
        #: Pipelines the publisher task sent (for tests and benchmarks).
        self.pipelines = 0

    def __bool__(self) -> bool:
        return bool(self._fields)

    def park(self, key: str, fields: list[str]) -> None:
        """Publish ``HSET key *fields`` (and its expiry) later, within :data:`PUBLISH_DELAY`."""
        into = self._fields.setdefault(key, {})
        into.update(zip(fields[::2], fields[1::2], strict=True))
        if self._wake is None:
            # One task per runtime, owned by its host task group, started when first needed.
            self._wake = anyio.Event()
            self._host.start_soon(self._run, name="datagraph-parked-positions")
        self._wake.set()

    def take(self) -> Parked:
        """Everything parked, for a pipeline about to be sent (see :meth:`commands`)."""
        taken, self._fields = self._fields, {}
        return taken

    def restore(self, taken: Parked) -> None:
        """Park again what a failed pipeline took; what was parked since wins."""
        for key, fields in taken.items():
            newer = self._fields.get(key)
            self._fields[key] = {**fields, **newer} if newer else fields
        if taken and self._wake is not None:
            self._wake.set()

    def commands(self, taken: Parked) -> list[list[str]]:
        """The commands that publish ``taken``: one ``HSET`` and one ``EXPIRE ... NX`` per key."""
        out: list[list[str]] = []
        for key, fields in taken.items():
            hset = ["HSET", key]
            for field, value in fields.items():
                hset += [field, value]
            out += [hset, ["EXPIRE", key, self._ttl, "NX"]]
        return out

    async def publish(self) -> None:
        """Publish everything parked now, in one pipeline; a failure keeps it parked and raises."""
        async with self._lock:
            taken = self.take()
            if not taken:
                return
            try:
                commands = self.commands(taken)
                # The positions of many runs, so not one run's keys: on a standalone store
                # they still go as one script call (datagraph.store.fold), which costs the
                # client far less Python than a pipeline of two commands per run.
                folded = (
                    fold(commands, "", cluster=False)
                    if len(commands) <= FOLD_AT_MOST and not is_cluster(self._client)
                    else None
                )
                result, _ = await pipeline(
                    self._client,
                    folded[0] if folded else commands,
                    retry_for=self._retry_for,
                    doing="publishing callers' read positions",
                )
                if folded:
                    result = folded[1](result)
                refused = [reply for reply in result if isinstance(reply, Exception)]
                if refused:
                    raise StoreError(f"Valkey refused to publish callers' read positions: {refused[0]}")
            except BaseException:
                self.restore(taken)
                raise

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            # Wait a little: positions parked meanwhile go in the same pipeline, and
            # a reader's XREAD may carry them first (then there is nothing to send).
            await anyio.sleep(PUBLISH_DELAY)
            if not self._fields:
                continue
            try:
                await self.publish()
            except Exception:
                # Kept parked (publish restored them): the next round, or aclose, tries again.
                log.exception("publishing callers' read positions failed; trying again later")
                await anyio.sleep(1.0)
            else:
                self.pipelines += 1

    async def aclose(self) -> None:
        """Publish what is still parked (the runtime is closing); raises if the store refuses.

        Waits at most ``request_timeout`` (a store that is gone does not hold a
        shutdown up for the whole ``reconnect_timeout``).
        """
        if not self._fields:
            return
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(self._close_timeout):
                    await self.publish()
            except TimeoutError:
                raise StoreError(
                    f"could not publish the callers' read positions of {len(self._fields)} run(s) "
                    f"within {self._close_timeout:g}s (request_timeout) while closing; "
                    "the store is unreachable, so telemetry misses what they had read"
                ) from None
