"""What one supervisor holds on one event loop: clients, reader pool, host."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from glide import GlideClient

from ._backend import LoopHost
from .settings import Settings
from .store.client import BlockingPool, StoreAddress, close_now
from .store.codec import Codec

__all__ = ["Runtime"]


@dataclass(eq=False)
class Runtime:
    settings: Settings
    codec: Codec
    address: StoreAddress
    client: GlideClient
    pool: BlockingPool
    host: LoopHost
    worker_id: str

    def __post_init__(self) -> None:
        #: Cancel scopes of the processors running here, by run: cancelling or failing
        #: a run stops them at once, not only at their next value.
        self.running: dict[str, set[anyio.CancelScope]] = {}
        self.stop_reasons: dict[str, Exception] = {}
        # The loop is ending (or the host was cancelled): release the connections.
        self.host.on_exit.append(self.close_now)

    def stop_run(self, run_id: str, reason: Exception) -> None:
        """Cancel every processor of ``run_id`` running in this runtime, for ``reason``."""
        scopes = self.running.get(run_id)
        if scopes:
            self.stop_reasons[run_id] = reason
            for scope in list(scopes):
                scope.cancel()

    def close_now(self) -> None:
        self.pool.close_now()
        close_now(self.client)

    async def aclose(self) -> None:
        self.host.cancel()
        await self.pool.aclose()
        self.close_now()
