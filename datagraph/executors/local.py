"""In-process execution with anyio tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import UnknownProcessorError
from ..processor import Implementation, Processor, registry
from ..runner import run_processor
from ..store import keys
from .base import Executor

if TYPE_CHECKING:
    from ..context import Context
    from ..plan import Plan
    from ..runtime import Runtime

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """Runs every processor as a task in this process's event loop."""

    kind = "local"
    runs_here = True

    def _implementation(self, processor: Processor) -> Implementation:
        name = processor.name
        impl = registry.implementation(processor)
        if impl is None:
            raise UnknownProcessorError(
                f"processor {name!r} has no implementation in this process; decorate a function "
                f"with it here, or run the flow with an executor that reaches the service that "
                "implements it (CeleryExecutor)"
            )
        return impl

    async def check(self, supervisor: Context, plan: Plan, processors: list[Processor]) -> None:
        for processor in processors:
            self._implementation(processor)

    async def dispatch(self, supervisor: Context, plan: Plan, processor: Processor) -> None:
        impl = self._implementation(processor)
        runtime = await supervisor.runtime()
        # Its outputs are written here: readers here may take them as they are written
        # rather than read them back (datagraph.local_streams).
        streams = [keys.stream(plan.run_id, io) for io in plan.processor(processor.name)["outputs"]]
        runtime.local.expect(streams)
        runtime.hold_record(plan.run_id)
        name = f"datagraph-{processor.name}"
        runtime.host.start_soon(_run, supervisor, runtime, plan, impl, streams, name=name)


async def _run(
    supervisor: Context, runtime: Runtime, plan: Plan, impl: Implementation, streams: list[str]
) -> None:
    try:
        await run_processor(supervisor, runtime, plan, impl)
    finally:
        runtime.local.done(streams)
        runtime.release_record(plan.run_id)
