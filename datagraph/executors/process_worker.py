"""The worker process of :class:`~datagraph.executors.ProcessExecutor`.

Started as ``python -m datagraph.executors.process_worker <commands fd> <replies fd>``
by the pool: a fresh interpreter (no fork, and the caller's ``__main__`` is not
run again).  It reads its configuration from the command pipe (the caller's
``sys.path``, store address, settings with the signing secret, event-loop
backend), attaches a supervisor, connects (which starts its heartbeat) and says
``ready``.  Then each ``run`` command imports the module that implements the
processor, if not yet imported, and runs it with
:func:`~datagraph.executors.worker.run_dispatched`, concurrently with the
others; ``done`` goes back when it has ended.

It stops when told to or when the command pipe closes (the caller exited or
was killed): running processors are cancelled, the heartbeat is marked
stopped.  Ctrl-C in a terminal reaches the whole process group; the worker
ignores it and lets the caller shut the pool down in order.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

import anyio
import anyio.to_thread

from .. import liveness
from ..processor import registry
from ..supervisor import Supervisor
from .local import LocalExecutor
from .worker import run_dispatched

__all__ = ["main"]

log = logging.getLogger("datagraph.process")


class WorkerSideExecutor(LocalExecutor):
    """The executor of a pool worker's own supervisor: a flow started in it runs in it."""

    kind = "process"


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands_fd, replies_fd = int(argv[1]), int(argv[2])
    for fd in (commands_fd, replies_fd):
        os.set_inheritable(fd, False)  # processes this one starts must not hold the pool's pipes
    commands = Connection(commands_fd, writable=False)
    replies = Connection(replies_fd, readable=False)
    try:
        config: dict[str, Any] = commands.recv()
    except EOFError:
        return 0  # the pool closed before this worker was configured
    paths = list(config["sys_path"])
    sys.path[:] = paths + [p for p in sys.path if p not in paths]
    try:
        Supervisor.attach(
            redis_config=config["redis_config"], executor=WorkerSideExecutor(), **config["settings"]
        )
    except Exception as exc:
        replies.send(("error", f"could not attach a supervisor: {type(exc).__name__}: {exc}"))
        return 1
    anyio.run(_serve, commands, replies, backend=config["backend"])
    return 0


async def _serve(commands: Connection, replies: Connection) -> None:
    supervisor = Supervisor.instance
    try:
        runtime = await supervisor.runtime()
    except Exception as exc:
        replies.send(("error", f"could not connect to the store: {type(exc).__name__}: {exc}"))
        return
    replies.send(("ready", runtime.worker_id))
    try:
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    message = await anyio.to_thread.run_sync(commands.recv, abandon_on_cancel=True)
                except (EOFError, OSError):
                    break  # the caller closed the pool, exited or was killed
                if message[0] != "run":
                    break
                run_id, name, module, qualname = message[1:]
                tg.start_soon(_run, replies, run_id, name, module, qualname, name=f"datagraph-{name}")
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(supervisor.settings.request_timeout):
            await liveness.mark_stopped(runtime)
            await Supervisor.adetach()


async def _run(replies: Connection, run_id: str, name: str, module: str, qualname: str) -> None:
    try:
        problem = _load(name, module, qualname)
        if problem is None:
            await run_dispatched(run_id, name)
        else:
            runtime = await Supervisor.instance.runtime()
            # worker=None: the processor never ran here, so no worker is recorded for it.
            await liveness.fail_processors(runtime, run_id, [liveness.Failure(
                processor=name, kind="ImportError", message=problem, worker=None,
                state=liveness.DISPATCHED,
            )])
    except Exception:
        # Only the store failing gets here (a processor's own failure is written to its
        # run): keep this worker serving the other processors, and say what happened.
        log.exception("processor %r of run %s could not be run or recorded", name, run_id)
    finally:
        with contextlib.suppress(OSError):  # the caller is gone: nobody to tell
            replies.send(("done", run_id, name))


def _load(name: str, module: str, qualname: str) -> str | None:
    """Import ``module`` so that it registers processor ``name``; say what is wrong if not."""
    pid = os.getpid()
    try:
        importlib.import_module(module)
    except Exception as exc:
        return (
            f"worker process {pid} could not import module {module!r}, which implements "
            f"processor {name!r}: {type(exc).__name__}: {exc}. It must be importable from the "
            "caller's sys.path without side effects that need the caller"
        )
    processor = registry.get(name)
    impl = processor.implementation if processor is not None else None
    if impl is None:
        return (
            f"worker process {pid} imported module {module!r}, but that did not register "
            f"processor {name!r}; decorate {qualname}() at the top level of {module!r}"
        )
    found = (getattr(impl.func, "__module__", None), getattr(impl.func, "__qualname__", None))
    if found != (module, qualname):
        return (
            f"processor {name!r} is implemented by {module}.{qualname}() in the caller, but by "
            f"{found[0]}.{found[1]}() in worker process {pid}: give each processor one implementation"
        )
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv))
