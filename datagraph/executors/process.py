"""Running processors in a pool of worker processes on this machine: every core, no broker.

``ProcessExecutor()`` hands each processor of a run to one of its worker
processes, the least busy one.  A worker process is a fresh interpreter
(:mod:`datagraph.executors.process_worker`; nothing is forked, and the caller's
``__main__`` is not run again) with one event loop on the caller's backend,
where the processors it is given run side by side, as on ``LocalExecutor``.
The store is the only shared piece, as with Celery: a worker reads the run's
plan from it, heartbeats into it, and writes and reads its streams there.

A worker finds a processor's implementation by importing the module of the
function decorated with it in the caller (``func.__module__``), with the
caller's ``sys.path``.  So a processor must be implemented at the top level
of an importable module: one defined in ``__main__`` or inside a function is
refused by ``start_flow``, naming it.

The pool starts on the first dispatch (sized to the CPU count by default),
serves every later run, replaces a worker that died, and is shut down with
the supervisor (``adetach()``/``detach()``), at interpreter exit, or when the
caller dies (each worker exits when its command pipe closes).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import sniffio

from ..exceptions import ConfigError, ProcessorError, UnknownProcessorError
from ..processor import Processor, registry
from .base import Executor
from .worker import fail_dispatch, record_dispatch

if TYPE_CHECKING:
    from ..plan import Plan
    from ..supervisor import Supervisor

__all__ = ["ProcessExecutor"]

log = logging.getLogger("datagraph.process")

_BACKENDS = ("asyncio", "trio")


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ProcessExecutor(Executor):
    """Runs each processor of a run in a pool of worker processes on this machine.

    ``max_workers``: processes in the pool (default: the CPUs this process may
    use).  ``backend``: the event loop of the workers ("asyncio" or "trio";
    default: the caller's, at the first dispatch).  ``start_timeout``: how long
    a worker may take to start and connect to the store.  ``stop_timeout``:
    how long closing waits for a worker to end its processors before killing it.
    """

    kind = "process"

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        backend: str | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigError(f"ProcessExecutor max_workers must be a positive int, got {max_workers!r}")
        if backend is not None and backend not in _BACKENDS:
            raise ConfigError(f"ProcessExecutor backend must be 'asyncio' or 'trio', got {backend!r}")
        for label, value in (("start_timeout", start_timeout), ("stop_timeout", stop_timeout)):
            if not value > 0:
                raise ConfigError(f"ProcessExecutor {label} must be positive, got {value!r}")
        self.max_workers = max_workers or default_workers()
        self.backend = backend
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._pool: _Pool | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProcessExecutor(max_workers={self.max_workers})"

    def pids(self) -> list[int]:
        """Process ids of the pool's live workers (empty before the first run)."""
        pool = self._pool
        return pool.pids() if pool is not None else []

    async def start(self, supervisor: Supervisor) -> None:
        """Start the pool now rather than at the first dispatch; wait until every worker is up."""
        pool = self._pool_for(supervisor)
        if not pool.full():
            await anyio.to_thread.run_sync(pool.fill)

    # -- Executor --------------------------------------------------------------

    async def check(self, supervisor: Supervisor, plan: Plan, processors: list[Processor]) -> None:
        for processor in processors:
            locate(processor)

    async def dispatch(self, supervisor: Supervisor, plan: Plan, processor: Processor) -> None:
        module, qualname = locate(processor)
        await self.start(supervisor)
        name = processor.name
        await record_dispatch(supervisor, plan, name)
        try:
            self._pool_for(supervisor).submit(plan.run_id, name, module, qualname)
        except ConfigError as exc:
            raise await fail_dispatch(supervisor, plan, name, str(exc)) from exc

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _pool_for(self, supervisor: Supervisor) -> _Pool:
        with self._lock:
            if self._pool is None:
                backend = self.backend or sniffio.current_async_library()
                self._pool = _Pool(self, _worker_config(supervisor, backend))
            return self._pool


def locate(processor: Processor) -> tuple[str, str]:
    """The module and qualified name of the function implementing ``processor`` here.

    Raises if a worker process could not find it by importing that module.
    """
    name = processor.name
    impl = processor.implementation
    if impl is None:
        local = registry.get(name)
        if local is not None and local == processor:
            impl = local.implementation
    if impl is None:
        raise UnknownProcessorError(
            f"processor {name!r} has no implementation in this process; ProcessExecutor's "
            "workers import the module of the function decorated with it here, so import that "
            "module before starting the flow"
        )
    module = getattr(impl.func, "__module__", None)
    qualname = getattr(impl.func, "__qualname__", repr(impl.func))
    if module in (None, "__main__", "__mp_main__"):
        raise ProcessorError(
            f"processor {name!r} is implemented by {qualname}() in the __main__ module, which "
            "ProcessExecutor's worker processes cannot import; move it to a module of its own "
            "(say, myflow/processors.py) and import it from your script"
        )
    if "<locals>" in qualname:
        raise ProcessorError(
            f"processor {name!r} is implemented by {qualname}(), defined inside a function: "
            f"importing {module!r} in a worker process would not register it. Decorate a function "
            f"at the top level of {module!r} instead"
        )
    if getattr(sys.modules.get(str(module)), "__spec__", None) is None:
        raise ProcessorError(
            f"processor {name!r} is implemented in module {module!r}, which was not imported "
            "from a file on sys.path, so a worker process cannot import it; make it an "
            "importable module"
        )
    return str(module), qualname


def _worker_config(supervisor: Supervisor, backend: str) -> dict[str, Any]:
    settings = {f.name: getattr(supervisor.settings, f.name) for f in fields(supervisor.settings)}
    settings["secret"] = supervisor.signing_secret
    address = supervisor.address
    return {
        "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
        "redis_config": {f.name: getattr(address, f.name) for f in fields(address)},
        "settings": settings,
        "backend": backend,
    }


@dataclass(eq=False)
class _Worker:
    """One worker process, as the pool sees it."""

    process: subprocess.Popen[bytes]
    commands: Connection
    replies: Connection
    ready: threading.Event = field(default_factory=threading.Event)
    worker_id: str | None = None
    error: str | None = None
    #: Processors handed to it that it has not reported done.
    active: int = 0
    exited: bool = False
    reader: threading.Thread | None = None


class _Pool:
    """The worker processes of one executor; thread-safe, usable from any event loop."""

    def __init__(self, executor: ProcessExecutor, config: dict[str, Any]) -> None:
        self._size = executor.max_workers
        self._start_timeout = executor.start_timeout
        self._stop_timeout = executor.stop_timeout
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
                for worker in broken:
                    self._stop(worker)
                worker = broken[0]
                why = worker.error or (
                    f"it exited with status {worker.process.returncode}" if worker.exited
                    else f"it did not start within start_timeout ({self._start_timeout:g}s)"
                )
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
                        worker.active -= 1
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
            worker.ready.set()
            if not closing and worker.error is None:
                log.warning(
                    "ProcessExecutor worker process %d (%s) exited with status %s while running %d "
                    "processor(s); their runs fail once its heartbeat lease expires, and a new "
                    "worker replaces it at the next dispatch",
                    worker.process.pid, worker.worker_id, code, worker.active,
                )

    def submit(self, run_id: str, name: str, module: str, qualname: str) -> None:
        """Hand processor ``name`` of ``run_id`` to the least busy live worker."""
        with self._lock:
            live = [w for w in self._workers if not w.exited and w.ready.is_set()]
            while live:
                self._turn += 1
                # Least busy first; among equals, take turns.
                order = sorted(range(len(live)), key=lambda i: (live[i].active, (i - self._turn) % len(live)))
                worker = live[order[0]]
                try:
                    worker.commands.send(("run", run_id, name, module, qualname))
                except OSError:
                    worker.exited = True
                    live.remove(worker)
                    continue
                worker.active += 1
                return
        raise ConfigError(f"no ProcessExecutor worker process is alive to run processor {name!r}")

    def close(self) -> None:
        """Stop every worker: ask, wait up to ``stop_timeout``, then kill what is left."""
        atexit.unregister(self.close)
        with self._lock:
            self._closing = True
            workers, self._workers = self._workers, []
        for worker in workers:
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
        if not worker.commands.closed:
            worker.commands.close()
        if worker.reader is not None and worker.reader is not threading.current_thread():
            worker.reader.join()
