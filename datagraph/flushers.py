"""Starts a processor's flusher task only once it has something to send before its close.

A processor's writer sends what the processor yields whenever the processor
waits for something (its flusher task gets the loop), when a buffer fills
up, or when values have lingered for ``linger``.  Most short runs never need
that task: the processor yields its few values and ends in one go, and its
closing flush carries them.  So the flusher is not started with the
processor.  A writer that gets something to send (a first value, a command
to ride along) asks this runtime-wide starter instead; the starter's one task
gets the loop at the same moment the writer's flusher would have, and starts
the writer's flusher only if the writer still has something to send and has
not closed meanwhile.  A writer that must send at once (a full buffer, values
past their linger) starts its flusher itself, without asking.

The flusher tasks and the starter's task belong to the runtime's host task
group; a flusher ends when its writer closes (``StreamWriter.stop_flusher``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import anyio

if TYPE_CHECKING:
    from ._backend import LoopHost

__all__ = ["Flushable", "FlusherStarter"]


class Flushable(Protocol):
    """A writer whose flusher the starter may start (``datagraph.streams.StreamWriter``)."""

    def start_flusher_if_due(self) -> None:
        """Start the flusher (with :meth:`FlusherStarter.start`) if something still waits to be sent."""

    async def run_flusher(self) -> None:
        """The flusher task's body."""


class FlusherStarter:
    """One runtime's starter of flusher tasks, for the writers that turn out to need one."""

    def __init__(self, host: LoopHost) -> None:
        self._host = host
        self._asked: list[Flushable] = []
        #: Set when a writer asks; None until the starter's task is started.
        self._wake: anyio.Event | None = None
        #: Flusher tasks started (for tests and benchmarks).
        self.started = 0

    def ask(self, writer: Flushable) -> None:
        """Start ``writer``'s flusher at the loop's next turn if it still needs one then."""
        self._asked.append(writer)
        if self._wake is None:
            # One task per runtime, owned by its host task group, started when first needed.
            self._wake = anyio.Event()
            self._host.start_soon(self._run, name="datagraph-flusher-starter")
        self._wake.set()

    def start(self, writer: Flushable, name: str) -> None:
        """Start ``writer``'s flusher task now (the writer has checked that it has none)."""
        self.started += 1
        self._host.start_soon(writer.run_flusher, name=name)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            asked, self._asked = self._asked, []
            for writer in asked:
                writer.start_flusher_if_due()
