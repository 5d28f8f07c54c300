"""A third-party executor: every processor of a run in a process of its own.

The whole executor protocol in a few lines (``docs/executors.md`` walks
through it).  The caller's side, ``dispatch``, records the dispatch and hands
"processor X of run R" over; the worker's side, here a fresh Python process
(``python -m docs.examples.subprocess_executor``), attaches a supervisor to the
same store with the same secret and calls ``run_dispatched(run_id, name)``.
Swap the process start for a message to a queue, a container or a serverless
function and this is the shape of every executor: ``ProcessExecutor`` and
``CeleryExecutor`` are the same two calls with a pipe or a broker in between.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import anyio
import anyio.to_thread
import sniffio

from datagraph import Executor, Processor, Supervisor
from datagraph.exceptions import ProcessorError
from datagraph.executors import fail_dispatch, record_dispatch, run_dispatched
from datagraph.plan import Plan


class SubprocessExecutor(Executor):
    """Runs each processor of a run in a new Python process on this machine."""

    kind = "subprocess"  # what the dashboard shows as its workers' executor

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    async def check(self, supervisor: Supervisor, plan: Plan, processors: list[Processor]) -> None:
        # Before anything of the run is written: refuse what a worker could not find.
        for processor in processors:
            _module_of(processor)

    async def dispatch(self, supervisor: Supervisor, plan: Plan, processor: Processor) -> None:
        # 1. Record the dispatch: a watchdog fails the processor if no worker starts it.
        await record_dispatch(supervisor, plan, processor.name)
        # 2. Hand it over, and return without waiting for it to finish.
        command = [
            sys.executable, "-m", __name__, plan.run_id, processor.name, _module_of(processor),
            supervisor.address.url_with_password(), sniffio.current_async_library(),
        ]
        try:
            child = await anyio.to_thread.run_sync(_start, command, supervisor.signing_secret)
        except OSError as exc:
            why = f"could not start a process for processor {processor.name!r}: {exc}"
            raise await fail_dispatch(supervisor, plan, processor.name, why) from exc
        self._children = [c for c in self._children if c.poll() is None] + [child]

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        children, self._children = self._children, []
        for child in children:
            child.terminate()  # a run still going fails, naming the processor, once its lease expires
        for child in children:
            child.wait()


def _module_of(processor: Processor) -> str:
    impl = processor.implementation
    module = getattr(impl.func, "__module__", "__main__") if impl is not None else None
    if module is None or module == "__main__" or "<locals>" in impl.func.__qualname__:  # type: ignore[union-attr]
        raise ProcessorError(
            f"processor {processor.name!r} must be implemented at the top level of an importable "
            "module, imported here, for a worker process to find it"
        )
    return str(module)


def _start(command: list[str], secret: bytes) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    child = subprocess.Popen(command, stdin=subprocess.PIPE, env=env)
    assert child.stdin is not None
    child.stdin.write(secret)  # by pipe: neither the command line nor the environment shows it
    child.stdin.close()
    return child


# -- the worker side ---------------------------------------------------------------------


async def _work(run_id: str, name: str) -> None:
    try:
        # 3. The one call that runs the processor and records how it ended.
        await run_dispatched(run_id, name)
    finally:
        await Supervisor.adetach()


def main(argv: list[str]) -> None:
    run_id, name, module, url, backend = argv[1:6]
    secret = sys.stdin.buffer.read()
    importlib.import_module(module)  # registers the processor in this process
    Supervisor.attach(redis_config={"url": url}, executor=SubprocessExecutor(), secret=secret)
    anyio.run(_work, run_id, name, backend=backend)


if __name__ == "__main__":
    main(sys.argv)
