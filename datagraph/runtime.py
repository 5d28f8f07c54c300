"""What one supervisor holds on one event loop: clients, reader pool, host."""

from __future__ import annotations

from dataclasses import dataclass

from glide import GlideClient

from ._backend import LoopHost
from .settings import Settings
from .store.client import BlockingPool, StoreAddress
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

    async def aclose(self) -> None:
        self.host.cancel()
        await self.pool.aclose()
        from .store.client import _close_quietly

        await _close_quietly(self.client)
