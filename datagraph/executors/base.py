"""The executor interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..context import Context
    from ..plan import Plan
    from ..processor import Processor

__all__ = ["Executor"]


class Executor(ABC):
    """Runs a processor of a run by name (``docs/executors.md`` describes the protocol).

    ``check`` runs before anything of the run is written, so a run that cannot
    be executed fails before it starts; ``dispatch`` starts one processor and
    returns without waiting for it to finish.
    """

    #: Short name shown in telemetry ("local", "celery").
    kind: str = "custom"
    #: Runs every processor in this process's event loop, so a run's record may go
    #: with its processors' first pipeline (``datagraph.recording``).
    runs_here: bool = False

    async def check(self, supervisor: Context, plan: Plan, processors: list[Processor]) -> None:  # noqa: B027
        """Raise if some processor of ``plan`` cannot be run by this executor."""

    @abstractmethod
    async def dispatch(self, supervisor: Context, plan: Plan, processor: Processor) -> None:
        """Start ``processor`` of ``plan``'s run; do not wait for it to finish."""

    async def aclose(self) -> None:  # noqa: B027
        """Release what the executor holds (``Supervisor.aclose()``, ``adetach()``)."""

    def close(self) -> None:  # noqa: B027
        """Release what the executor holds, from synchronous code (``Supervisor.detach()``).

        Called after ``aclose()`` too, so it must be idempotent.
        """
