"""What one supervisor holds on one event loop: clients, reader pool, host."""

from __future__ import annotations

from dataclasses import dataclass

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
        # The loop is ending (or the host was cancelled): release the connections.
        self.host.on_exit.append(self.close_now)

    def close_now(self) -> None:
        self.pool.close_now()
        close_now(self.client)

    async def aclose(self) -> None:
        self.host.cancel()
        await self.pool.aclose()
        self.close_now()
