"""The only module that knows which event loop it runs on.

Datagraph is written against anyio.  Two things need the backend itself: an
identity for "this event loop" (clients are created lazily per loop), and a
task group that outlives the call that started a run, so that
``start_flow`` can return while its processors keep running.  The host task
group lives in a system task (Trio) or a loop task (asyncio) and ends with
the loop; it never lets an exception escape (each job records its own).

On asyncio the host's jobs are plain loop tasks that it tracks, cancels and
waits for as the task group would: anyio's ``start_soon`` costs about ten
times as much per task (a task handle with its own cancel scope and event),
and a short run starts two.  On Trio they are tasks of a nursery inside the
task group, for the same reason.  anyio's cancel scopes work in them as in its
own tasks.  For the same reason a reader that waits for a writer in the same
process waits on a :class:`Wake` (a loop future and a timer on asyncio)
rather than an anyio event inside a cancel scope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import sniffio
from anyio.abc import TaskGroup

__all__ = ["LoopHost", "Wake", "current_loop"]

log = logging.getLogger("datagraph.host")

#: How long a host that ends waits for its asyncio jobs to finish once cancelled, in
#: seconds (their shielded clean-up is bounded by request_timeout already).
_EXIT_WAIT = 30.0


def current_loop() -> object:
    """An object identifying the running event loop."""
    if sniffio.thread_local.name is None:
        # Not Trio (which names itself there): asyncio's own lookup is a C call, where
        # sniffio's asks for the current task too (1.6 us against 0.25 us).
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            pass
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    return asyncio.get_running_loop()


class Wake:
    """A one-shot wake-up that one task waits for, for at most a while.

    What a reader waiting for a writer in the same process needs, at a third of
    the cost of an ``anyio.Event`` in an ``anyio.move_on_after`` on asyncio (a
    loop future and a timer; anyio's cancel scope runs about a hundred lines of
    Python on entry and exit).  A cancelled waiter is cancelled as in any other
    wait.  Made by :meth:`LoopHost.wake`.
    """

    __slots__ = ("_event", "_future")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._future: asyncio.Future[None] | None = None
        self._event: Any = None
        if loop is not None:
            self._future = loop.create_future()
        else:
            import trio

            self._event = trio.Event()

    def set(self) -> None:
        future = self._future
        if future is None:
            self._event.set()
        elif not future.done():
            future.set_result(None)

    async def wait(self, limit: float) -> None:
        """Until :meth:`set`, or ``limit`` seconds."""
        future = self._future
        if future is None:
            import trio

            with trio.move_on_after(limit):
                await self._event.wait()
            return
        timer = future.get_loop().call_later(limit, _expire, future)
        try:
            await future
        finally:
            timer.cancel()


async def _trio_job(func: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...], name: str) -> None:
    """A job of the host on Trio: one that escapes with an error is logged, as on asyncio."""
    try:
        await func(*args)
    except Exception:
        log.exception("datagraph job %s failed", name)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class LoopHost:
    """A task group bound to one event loop's lifetime."""

    def __init__(self) -> None:
        self._tg: TaskGroup | None = None
        self._started = anyio.Event()
        self._handle: Any = None
        self._done = False
        #: On asyncio: the loop, and the jobs running as its tasks.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: set[asyncio.Task[Any]] = set()
        #: On Trio: the nursery the jobs run in (inside the task group).
        self._nursery: Any = None
        #: Called (synchronously) when the host ends, with the loop still alive.
        self.on_exit: list[Callable[[], None]] = []

    async def start(self) -> None:
        library = sniffio.current_async_library()
        if library == "trio":
            import trio

            trio.lowlevel.spawn_system_task(self._run, name="datagraph-host")
        else:
            self._loop = asyncio.get_running_loop()
            # Held in self._handle so the task is not garbage collected.
            self._handle = self._loop.create_task(self._run(), name="datagraph-host")
        await self._started.wait()

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    if self._loop is None:
                        import trio

                        async with trio.open_nursery() as nursery:
                            self._nursery = nursery
                            self._started.set()
                            await trio.sleep_forever()
                    else:
                        self._started.set()
                        await anyio.sleep_forever()
                finally:
                    if self._jobs:
                        with anyio.CancelScope(shield=True), anyio.move_on_after(_EXIT_WAIT):
                            await self._end_jobs()
        finally:
            self._done = True
            for callback in self.on_exit:
                callback()

    async def _end_jobs(self) -> None:
        """Cancel the asyncio jobs and wait until they have finished (their clean-up too)."""
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.wait(jobs)

    def _finished(self, job: asyncio.Task[Any]) -> None:
        self._jobs.discard(job)
        if not job.cancelled() and job.exception() is not None:
            # A job records its own failures; one that escapes is a bug: say so, and keep
            # the other jobs going.
            log.error("datagraph job %s failed", job.get_name(), exc_info=job.exception())

    def wake(self) -> Wake:
        """A new :class:`Wake` for a task of this host's loop."""
        return Wake(self._loop)

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None
    ) -> None:
        if self._tg is None:
            raise RuntimeError("LoopHost.start_soon() called before start()")
        if self._done or self._tg.cancel_scope.cancel_called:
            func(*args).close()  # the host is ending: as a cancelled task group, start nothing
            return
        if self._loop is None:
            name = name or getattr(func, "__qualname__", repr(func))
            self._nursery.start_soon(_trio_job, func, args, name, name=name)
            return
        job = self._loop.create_task(func(*args), name=name)
        self._jobs.add(job)
        job.add_done_callback(self._finished)

    def cancel(self) -> None:
        if self._tg is not None and not self._done:
            self._tg.cancel_scope.cancel()
