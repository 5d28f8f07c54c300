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
caller's ``sys.path`` as it is when the pool starts.  So a processor must be implemented at the top level
of an importable module: one defined in ``__main__`` or inside a function is
refused by ``start_flow``, naming it.

The pool starts on the first dispatch (sized to the CPU count by default),
serves every later run, replaces a worker that died, and is shut down with
the supervisor (``adetach()``/``detach()``), at interpreter exit, or when the
caller dies (each worker exits when its command pipe closes).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import anyio.to_thread
import sniffio

from ..exceptions import ConfigError, ProcessorError, UnknownProcessorError
from ..processor import Processor, registry
from .base import Executor
from .process_pool import Pool
from .worker import fail_dispatch, record_dispatch

if TYPE_CHECKING:
    from ..context import Context
    from ..plan import Plan

__all__ = ["ProcessExecutor"]

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
        self._pool: Pool | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProcessExecutor(max_workers={self.max_workers})"

    def pids(self) -> list[int]:
        """Process ids of the pool's live workers (empty before the first run)."""
        pool = self._pool
        return pool.pids() if pool is not None else []

    async def start(self, supervisor: Context) -> None:
        """Start the pool now rather than at the first dispatch; wait until every worker is up."""
        pool = self._pool_for(supervisor)
        if not pool.full():
            await anyio.to_thread.run_sync(pool.fill)

    # -- Executor --------------------------------------------------------------

    async def check(self, supervisor: Context, plan: Plan, processors: list[Processor]) -> None:
        """Refuse what a worker could not find; start the pool (before the run is recorded)."""
        for processor in processors:
            locate(processor)
        await self.start(supervisor)

    async def dispatch(self, supervisor: Context, plan: Plan, processor: Processor) -> None:
        module, qualname = locate(processor)
        name = processor.name
        await record_dispatch(supervisor, plan, name)
        # Where to report the processor lost if its worker dies: this loop, this runtime.
        origin = (anyio.lowlevel.current_token(), await supervisor.runtime())
        try:
            await self.start(supervisor)  # replaces a worker that died since check()
            self._pool_for(supervisor).submit(plan.run_id, name, module, qualname, origin)
        except ConfigError as exc:
            raise await fail_dispatch(supervisor, plan, name, str(exc)) from exc

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _pool_for(self, supervisor: Context) -> Pool:
        with self._lock:
            if self._pool is None:
                backend = self.backend or sniffio.current_async_library()
                self._pool = Pool(
                    self.max_workers, _worker_config(supervisor, backend),
                    start_timeout=self.start_timeout, stop_timeout=self.stop_timeout,
                )  # fmt: skip
            return self._pool


def locate(processor: Processor) -> tuple[str, str]:
    """The module and qualified name of the function implementing ``processor`` here.

    Raises if a worker process could not find it by importing that module.
    """
    name = processor.name
    impl = registry.implementation(processor)
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


def _worker_config(supervisor: Context, backend: str) -> dict[str, Any]:
    settings = {f.name: getattr(supervisor.settings, f.name) for f in fields(supervisor.settings)}
    settings["secret"] = supervisor.signing_secret
    address = supervisor.address
    return {
        "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
        # The cluster's nodes as this process found them (seeds) are found again by the worker.
        "redis_config": {f.name: getattr(address, f.name) for f in fields(address) if f.name != "seeds"},
        "settings": settings,
        "backend": backend,
    }
