"""A worker process for the telemetry tests.

``python tests/telemetry_worker.py URL [--run N]`` attaches a Supervisor to
the store at URL, implements the ``tw_*`` processors, optionally runs the
flow ``tw_source -> tw_label -> tw_total`` on ``range(N)`` and reads its
output, then prints one JSON line ``{"worker": id, "run": id or null}`` and
stays alive, heart-beating every 0.2 s, until killed.

:func:`start_worker` runs it from a test and returns once that line is read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor

HEARTBEAT = 0.2
SECRET = b"telemetry-test-secret"

T = TypeVar("T")


class Label(BaseModel):
    value: int
    text: str


def define_processors() -> tuple[Processor, ...]:
    """The processors this worker implements (defined on demand, not at import)."""
    tw_source = Processor("tw_source", ["tw_n"], ["tw_numbers"])
    tw_label = Processor("tw_label", ["tw_numbers"], ["tw_labels"], description="Labels numbers.")
    tw_total = Processor("tw_total", ["tw_labels"], ["tw_total"], wait=True, max_backlog=50)
    tw_untyped = Processor("tw_untyped", ["tw_anything"], ["tw_whatever"])

    @tw_source
    async def _source(tw_n: IO[int]) -> AsyncIterator[IOVal[int]]:
        """Counts from 0 to n - 1."""
        for i in range(await tw_n.first()):
            yield IOVal("tw_numbers", i)

    @tw_label
    async def _label(tw_numbers: IO[int]) -> AsyncIterator[IOVal[Label]]:
        async for value in tw_numbers:
            yield IOVal("tw_labels", Label(value=value, text=f"#{value}"))

    @tw_total
    async def _total(tw_labels: IO[Label]) -> AsyncIterator[IOVal[dict[str, int]]]:
        labels = await tw_labels.collect()
        yield IOVal("tw_total", {"count": len(labels), "sum": sum(label.value for label in labels)})

    @tw_untyped
    async def _untyped(tw_anything):  # type: ignore[no-untyped-def]
        yield IOVal("tw_whatever", await tw_anything.first())

    return tw_source, tw_label, tw_total, tw_untyped


async def _main(count: int | None, processors: tuple[Processor, ...]) -> None:
    supervisor = Supervisor.instance
    await supervisor.runtime()  # publishes the registrations
    run_id = None
    if count is not None:
        flow = Flow.from_processors(*processors[:3], name="tw-flow").resolve()
        outputs = await supervisor.start_flow(flow, [IOVal("tw_n", count)])
        run_id = next(iter(outputs.values())).run_id
        await outputs["tw_total"].collect()
        await supervisor.wait(run_id, timeout=30)
        # The caller's read position (parked, due within 50 ms) is in the store before we say so.
        with anyio.fail_after(30):
            await (await supervisor.runtime()).parked.publish()
    print(json.dumps({"worker": supervisor.worker_id, "run": run_id}), flush=True)
    await anyio.sleep_forever()


async def wait_for(check: Callable[[], Awaitable[T | None]], within: float = 10.0) -> T:
    """Poll ``check`` until it returns something other than None or False (for ``within`` s)."""
    with anyio.fail_after(within):
        while True:
            result = await check()
            if result is not None and result is not False:
                return result
            await anyio.sleep(0.01)


@dataclass
class Worker:
    process: subprocess.Popen[str]
    id: str
    run: str | None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def start_worker(url: str, *, run: int | None = None) -> Iterator[Worker]:
    """Run this module as a worker process; kill it on exit."""
    command = [sys.executable, str(Path(__file__).resolve()), url]
    if run is not None:
        command += ["--run", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the telemetry worker exited with {process.wait(timeout=10)}")
        ready: dict[str, Any] = json.loads(line)
        yield Worker(process, ready["worker"], ready["run"])
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args[args.index("--run") + 1]) if "--run" in args else None
    Supervisor.attach(
        redis_config={"url": args[0]},
        executor=LocalExecutor(),
        secret=SECRET,
        heartbeat_interval=HEARTBEAT,
    )
    anyio.run(_main, n, define_processors())
