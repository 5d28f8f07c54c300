"""What re-runs and retries need of the supervisor: a context that starts, follows and cancels runs.

A protocol, like :class:`~datagraph.context.Context`, so that
:mod:`datagraph.rerun` and :mod:`datagraph.retries`, which the supervisor
uses, never import it back (``tests/test_layers.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from .context import Context

if TYPE_CHECKING:
    from .flow import Flow
    from .io import IO, IOVal

__all__ = ["Coordinator"]


class Coordinator(Context, Protocol):
    """A supervisor as re-runs and retries see it."""

    async def start_flow(
        self,
        flow: Flow,
        inputs: Iterable[IOVal[Any]] = (),
        *,
        all_outputs: bool = False,
        run_id: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException] | str] | None = None,
    ) -> dict[str, IO[Any]]: ...

    async def run_state(self, run_id: str) -> str | None: ...

    async def cancel(self, run_id: str) -> bool: ...
