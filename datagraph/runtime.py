"""What one supervisor holds on one event loop: clients, reader pool, host."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import anyio

from ._backend import LoopHost
from .flushers import FlusherStarter
from .local_streams import LocalStreams
from .parked import ParkedPositions
from .recording import RunRecord
from .settings import Settings
from .store import keys
from .store.client import BlockingPool, Store, StoreAddress, close_now
from .store.codec import Codec

__all__ = ["Runtime"]


@dataclass(eq=False)
class Runtime:
    settings: Settings
    codec: Codec
    address: StoreAddress
    client: Store
    pool: BlockingPool
    host: LoopHost
    worker_id: str

    def __post_init__(self) -> None:
        #: Cancel scopes of the processors running here, by run: cancelling or failing
        #: a run stops them at once, not only at their next value.
        self.running: dict[str, dict[anyio.CancelScope, str]] = {}
        self.stop_reasons: dict[str, Exception] = {}
        #: Callers' read positions waiting to ride with a later round trip (datagraph.parked).
        self.parked = ParkedPositions(self.client, self.host, self.settings)
        #: Starts processors' flusher tasks when they turn out to need one (datagraph.flushers).
        self.flushers = FlusherStarter(self.host)
        #: Streams written here, and readers here waiting for them (datagraph.local_streams).
        self.local = LocalStreams()
        #: Runs starting here whose record rides with their first pipeline (datagraph.recording).
        self.recording: dict[str, RunRecord] = {}
        # The loop is ending (or the host was cancelled): release the connections.
        self.host.on_exit.append(self.close_now)

    async def recorded(self, run_id: str) -> None:
        """Wait until ``run_id``, if it is starting here, is recorded in the store."""
        record = self.recording.get(run_id)
        if record is not None:
            await record.wait_to_write(run_id)

    def hold_record(self, run_id: str) -> None:
        """A processor of ``run_id`` is dispatched here while its record is on its way."""
        record = self.recording.get(run_id)
        if record is not None:
            record.holders += 1

    def release_record(self, run_id: str) -> None:
        """A processor counted by :meth:`hold_record` has ended."""
        record = self.recording.get(run_id)
        if record is not None:
            record.holders -= 1
            if record.holders <= 0 and record.error is not None:
                del self.recording[run_id]  # every processor has met the failure

    def stop_run(self, run_id: str, reason: Exception, *, spare: Collection[str] = ()) -> None:
        """Cancel the processors of ``run_id`` running in this runtime, for ``reason``.

        Processors named in ``spare`` go on: downstream of a failure, they first
        pass on what was written before it, then meet the failure in their input.
        """
        # Readers waiting here for a local writer read the store now: its end is there.
        self.local.wake_run(keys.stream(run_id, ""))
        scopes = self.running.get(run_id, {})
        stopping = [scope for scope, name in scopes.items() if name not in spare]
        if stopping:
            self.stop_reasons[run_id] = reason
            for scope in stopping:
                scope.cancel()

    def close_now(self) -> None:
        self.pool.close_now()
        close_now(self.client)

    async def aclose(self) -> None:
        try:
            await self.parked.aclose()  # nothing parked is lost
        finally:
            self.host.cancel()
            await self.pool.aclose()
            self.close_now()
