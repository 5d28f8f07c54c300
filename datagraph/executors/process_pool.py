"""The worker processes of a :class:`~datagraph.executors.ProcessExecutor`, as its caller sees them.

A worker is a ``python -m datagraph.executors.process_worker`` child with two
pipes: commands go down one (its configuration first, then ``run`` and
``stop``), replies come up the other (``ready``, ``done``, ``error``).  A
thread per worker follows its replies and notices its exit: an exit nobody
asked for fails the processors it held at once, from the event loops that
dispatched them.  The pool is thread-safe and usable from any event loop.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import anyio.lowlevel

from .. import liveness
from ..exceptions import ConfigError, StoreError

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["Origin", "Pool"]

log = logging.getLogger("datagraph.process")

#: The event loop (and its runtime) that dispatched a processor.
Origin = tuple[anyio.lowlevel.EventLoopToken, "Runtime"]


@dataclass(eq=False)
class _Worker:
    """One worker process, as the pool sees it."""

    process: subprocess.Popen[bytes]
    commands: Connection
    replies: Connection
    ready: threading.Event = field(default_factory=threading.Event)
    worker_id: str | None = None
    error: str | None = None
    #: Serialises writes to its command pipe.
    sending: threading.Lock = field(default_factory=threading.Lock)
    #: Processors handed to it that it has not reported done: (run id, name) -> origin.
    assigned: dict[tuple[str, str], Origin] = field(default_factory=dict)
    exited: bool = False
    reader: threading.Thread | None = None


class Pool:
    """The worker processes of one executor; thread-safe, usable from any event loop."""

    def __init__(
        self, size: int, config: dict[str, Any], *, start_timeout: float, stop_timeout: float
    ) -> None:
        self._size = size
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._config = config
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._fill_lock = threading.Lock()
        self._turn = 0
        self._closing = False
        atexit.register(self.close)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if not w.exited]

    def full(self) -> bool:
        with self._lock:
            return len(self._workers) == self._size and all(
                w.ready.is_set() and not w.exited for w in self._workers
            )

    def fill(self) -> None:
        """Start workers until the pool is full; wait until they are up (blocking)."""
        with self._fill_lock:
            with self._lock:
                if self._closing:
                    raise ConfigError("this ProcessExecutor was closed with its supervisor; attach a new one")
                self._workers = [w for w in self._workers if not w.exited]
                started = [self._spawn() for _ in range(self._size - len(self._workers))]
                self._workers += started
            deadline = time.monotonic() + self._start_timeout
            for worker in started:
                worker.ready.wait(max(0.0, deadline - time.monotonic()))
            broken = [w for w in started if w.error is not None or w.exited or not w.ready.is_set()]
            if broken:
                worker = broken[0]
                # Say why before stopping them: a late worker, once killed, has exited too.
                why = worker.error or (
                    f"it {_describe_exit(worker.process.returncode)}" if worker.exited
                    else f"it did not start within start_timeout ({self._start_timeout:g}s)"
                )
                for late in broken:
                    self._stop(late)
                raise ConfigError(f"a ProcessExecutor worker process could not start: {why}")

    def _spawn(self) -> _Worker:
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "datagraph.executors.process_worker",
                 str(commands_read), str(replies_write)],
                pass_fds=(commands_read, replies_write), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            for fd in (commands_write, replies_read):
                os.close(fd)
            raise
        finally:
            os.close(commands_read)
            os.close(replies_write)
        worker = _Worker(
            process, Connection(commands_write, readable=False), Connection(replies_read, writable=False)
        )
        worker.commands.send(self._config)
        worker.reader = threading.Thread(
            target=self._listen, args=(worker,), name=f"datagraph-pool-{process.pid}", daemon=True
        )
        worker.reader.start()
        return worker

    def _listen(self, worker: _Worker) -> None:
        """Follow one worker's replies until it exits."""
        try:
            while True:
                message = worker.replies.recv()
                if message[0] == "ready":
                    worker.worker_id = message[1]
                    worker.ready.set()
                elif message[0] == "done":
                    with self._lock:
                        worker.assigned.pop((message[1], message[2]), None)
                elif message[0] == "error":
                    worker.error = message[1]
        except (EOFError, OSError):
            pass  # the worker closed its end: it is exiting
        finally:
            code = worker.process.wait()
            worker.replies.close()
            with self._lock:
                worker.exited = True
                closing = self._closing
                lost, worker.assigned = worker.assigned, {}
            worker.ready.set()
            if not closing and worker.error is None:
                how = _describe_exit(code)
                log.warning(
                    "ProcessExecutor worker process %d (%s) %s while running %d processor(s); a new "
                    "worker replaces it at the next dispatch",
                    worker.process.pid, worker.worker_id, how, len(lost),
                )
                self._report_lost(worker, lost, how)

    @staticmethod
    def _report_lost(worker: _Worker, lost: dict[tuple[str, str], Origin], how: str) -> None:
        """Fail the processors of a dead worker now, from the loops that dispatched them.

        Were those loops gone, the heartbeat lease fails them all the same, a few seconds later.
        """
        by_origin: dict[int, tuple[Origin, list[tuple[str, str]]]] = {}
        for item, origin in lost.items():
            by_origin.setdefault(id(origin[1]), (origin, []))[1].append(item)
        for (token, runtime), items in by_origin.values():
            job = functools.partial(
                runtime.host.start_soon, _fail_lost, runtime, items, worker.process.pid,
                worker.worker_id or "", how,
            )  # fmt: skip
            # From a thread of its own: the loop may be blocked closing this very pool.
            threading.Thread(
                target=_call_in_loop, args=(job, token, items), name="datagraph-pool-lost", daemon=True
            ).start()

    def submit(self, run_id: str, name: str, module: str, qualname: str, origin: Origin) -> None:
        """Hand processor ``name`` of ``run_id`` to the least busy live worker."""
        tried: set[int] = set()
        while True:
            with self._lock:
                live = [
                    w for w in self._workers
                    if not w.exited and w.ready.is_set() and id(w) not in tried
                ]  # fmt: skip
                if not live:
                    break
                self._turn += 1
                # Least busy first; among equals, take turns.
                worker = min(
                    enumerate(live), key=lambda p: (len(p[1].assigned), (p[0] - self._turn) % len(live))
                )[1]
                worker.assigned[(run_id, name)] = origin
            # Sent outside the pool's lock: a full pipe must not stop the listeners' bookkeeping.
            try:
                with worker.sending:
                    worker.commands.send(("run", run_id, name, module, qualname))
                return
            except OSError:
                with self._lock:
                    worker.assigned.pop((run_id, name), None)
                tried.add(id(worker))
        raise ConfigError(f"no ProcessExecutor worker process is alive to run processor {name!r}")

    def close(self) -> None:
        """Stop every worker: ask, wait up to ``stop_timeout``, then kill what is left."""
        atexit.unregister(self.close)
        with self._lock:
            self._closing = True
            workers, self._workers = self._workers, []
        for worker in workers:
            with worker.sending:
                with contextlib.suppress(OSError):  # a worker already gone needs no telling
                    worker.commands.send(("stop",))
                worker.commands.close()
        deadline = time.monotonic() + self._stop_timeout
        for worker in workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "ProcessExecutor worker process %d did not stop within %gs; killing it",
                    worker.process.pid, self._stop_timeout,
                )
            self._stop(worker)

    def _stop(self, worker: _Worker) -> None:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()
        with worker.sending:
            if not worker.commands.closed:
                worker.commands.close()
        if worker.reader is not None and worker.reader is not threading.current_thread():
            worker.reader.join()


def _call_in_loop(job: Any, token: anyio.lowlevel.EventLoopToken, items: list[tuple[str, str]]) -> None:
    try:
        anyio.from_thread.run_sync(job, token=token)
    except RuntimeError as exc:  # that loop has ended
        log.debug("processors %s are left to the heartbeat lease: %s", items, exc)


async def _fail_lost(
    runtime: Runtime, items: list[tuple[str, str]], pid: int, worker_id: str, how: str
) -> None:
    """Fail processors whose worker process died, whether they had started or not."""
    by_run: dict[str, list[str]] = {}
    for run_id, name in items:
        by_run.setdefault(run_id, []).append(name)
    for run_id, names in by_run.items():
        failures: list[liveness.Failure] = []
        for name in names:
            message = f"worker process {pid} ({worker_id}) running processor {name!r} {how}"
            # Whichever state it is in applies: running on that worker, or not started yet.
            failures.append(liveness.Failure(name, "WorkerLost", message, worker_id, liveness.RUNNING))
            failures.append(liveness.Failure(name, "WorkerLost", message, None, liveness.DISPATCHED))
        try:
            await liveness.fail_processors(runtime, run_id, failures)
        except StoreError as exc:
            log.warning("run %s: could not record that its worker died (the lease will): %s", run_id, exc)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"

