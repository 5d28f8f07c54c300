"""A starting run's record, sent with the first pipeline of its processors here.

``start_flow`` records a run (its hash, its inputs, the run index) before it
returns.  When the run's processors all run in this process, they are
dispatched *before* that record is in the store: a processor that writes at
once (a source yielding its values and ending) then carries the record at the
head of its first pipeline, and the run starts in one round trip rather than
two.  The order in the store is unchanged: every other round trip of the
run's processors here waits until the record is in (:meth:`RunRecord.wait`),
and ``start_flow`` sends the record itself when no processor has taken it by
the time they all wait, then returns only once it is in.

If the record cannot be written, ``start_flow`` raises as before and stops
the run's processors here; any of them that reaches the store afterwards
meets the same error rather than writing for a run that was never recorded.
If ``start_flow`` is cancelled (or fails) while the pipeline carrying the
record is on its way, the record may still get in: the run is then ended in
the store (cancelled, or failed) behind it, not left "running".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from .exceptions import RunLostError

__all__ = ["RunRecord"]


class RunRecord:
    """The commands that record one starting run, and who sends them."""

    __slots__ = ("_changed", "_check", "commands", "doing", "error", "holders", "settled", "taken")

    def __init__(
        self, commands: list[list[Any]], check: Callable[[list[Any], int], None], doing: str
    ) -> None:
        #: The pipeline's head: the run's own keys first, then the run index.
        self.commands = commands
        #: What sending them is, for errors ("recording run ... in Valkey at ...").
        self.doing = doing
        #: Raises for replies that mean the record was refused (given them and the attempts).
        self._check = check
        #: A pipeline carries the commands (or ``start_flow`` sends them): nobody else may.
        self.taken = False
        #: In the store, or failed for good (then :attr:`error` says why).
        self.settled = False
        self.error: BaseException | None = None
        #: Processors dispatched with it that have not ended: a failed record stays
        #: until they all have, so that none of them writes for a run never recorded.
        self.holders = 0
        #: Set when it settles or is given back (then replaced).
        self._changed = anyio.Event()

    def take(self) -> list[list[Any]] | None:
        """The commands, for the one pipeline that sends them; None once taken."""
        if self.taken:
            return None
        self.taken = True
        return self.commands

    def accepts(self, replies: list[Any], attempts: int) -> bool:
        """Whether a processor's pipeline that carried it got it in, by its ``replies``.

        If not, it is given back: ``start_flow``, or the next pipeline, sends it
        again, so that whether the run starts depends on its record alone. If so,
        the carrier says :meth:`recorded` at once, before it hands its entries
        over: ``start_flow``'s caller is then reading before the readers woken
        here write.
        """
        try:
            self._check(replies, attempts)
        except Exception:
            self.give_back()
            return False
        return True

    def recorded(self) -> None:
        """The record is in (the carrier's :meth:`accepts` said so): wake who waits for it."""
        self._settle(None)

    def sent(self, replies: list[Any], attempts: int) -> None:
        """``start_flow``'s own send: in with ``replies``, or failed for good (and raises)."""
        try:
            self._check(replies, attempts)
        except BaseException as exc:
            self._settle(exc)
            raise
        self._settle(None)

    def give_back(self) -> None:
        """The pipeline that took it did not get it in: somebody sends it again."""
        if not self.settled:
            self.taken = False
            changed, self._changed = self._changed, anyio.Event()
            changed.set()

    def failed(self, error: BaseException) -> None:
        """It will not get in: its sender failed or stopped."""
        self._settle(error)

    def _settle(self, error: BaseException | None) -> None:
        if not self.settled:
            self.settled, self.error = True, error
            self._changed.set()

    async def changed(self) -> None:
        """Wait until it settles or is given back (at once if it is not taken)."""
        if self.taken and not self.settled:
            await self._changed.wait()

    async def wait(self) -> None:
        """Wait until the record is in the store; raises why it is not, if it failed."""
        while not self.settled:
            await self._changed.wait()
        if self.error is not None:
            raise self.error

    async def wait_to_write(self, run_id: str) -> None:
        """A processor's wait before its own round trip; raises :class:`RunLostError` if it failed.

        Not the record's own error (``start_flow`` raises that): a processor that
        meets this one stops without trying to record its end in a run that is not there.
        """
        while not self.settled:
            await self._changed.wait()
        if self.error is not None:
            raise RunLostError(f"run {run_id} was never recorded in the store: starting it failed")
