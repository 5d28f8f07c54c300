"""The only module that knows which event loop it runs on.

Datagraph is written against anyio.  Two things need the backend itself: an
identity for "this event loop" (clients are created lazily per loop), and a
task group that outlives the call that started a run, so that
``start_flow`` can return while its processors keep running.  The host task
group lives in a system task (Trio) or a loop task (asyncio) and ends with
the loop; it never lets an exception escape (each job records its own).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import sniffio
from anyio.abc import TaskGroup

__all__ = ["LoopHost", "current_loop"]


def current_loop() -> object:
    """An object identifying the running event loop."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    import asyncio

    return asyncio.get_running_loop()


class LoopHost:
    """A task group bound to one event loop's lifetime."""

    def __init__(self) -> None:
        self._tg: TaskGroup | None = None
        self._started = anyio.Event()
        self._handle: Any = None
        self._done = False
        #: Called (synchronously) when the host ends, with the loop still alive.
        self.on_exit: list[Callable[[], None]] = []

    async def start(self) -> None:
        library = sniffio.current_async_library()
        if library == "trio":
            import trio

            trio.lowlevel.spawn_system_task(self._run, name="datagraph-host")
        else:
            import asyncio

            # Held in self._handle so the task is not garbage collected.
            self._handle = asyncio.get_running_loop().create_task(self._run(), name="datagraph-host")
        await self._started.wait()

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._started.set()
                await anyio.sleep_forever()
        finally:
            self._done = True
            for callback in self.on_exit:
                callback()

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None
    ) -> None:
        if self._tg is None:
            raise RuntimeError("LoopHost.start_soon() called before start()")
        self._tg.start_soon(func, *args, name=name)

    def cancel(self) -> None:
        if self._tg is not None and not self._done:
            self._tg.cancel_scope.cancel()
