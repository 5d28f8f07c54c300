"""Entries handed from a writer to readers waiting in the same runtime, as they are written.

A stream whose writer runs in this runtime (a processor that ``LocalExecutor``
started here) is written by this process: a reader of the same runtime
waiting for that stream can take the writer's entries from its hands instead
of asking the store for them.  The entries go to the store all the same
(other readers, re-runs, telemetry and the dashboard read them there); only
the reader's round trip is saved, and with it the hop through the store
between a value written and a value read.

A batch of values is handed over as the pipeline that writes it goes out,
once the run is recorded: the reader works on it while the store takes it,
and any command the reader sends afterwards reaches the store after that
write.  A stream's end is handed over only once the store has it, so a
reader never ends a stream that the store does not end; if the store refuses
the write, the writer fails, and the failure reaches the reader after the
values, as any failure does.  The reply hands over the same batches again,
for readers that began waiting meanwhile; a reader skips what it has.

A reader waits here only when the wait can end here: every stream it waits
for has a local writer, and it has no read positions to publish (those ride
its reads, and writers' backpressure depends on them).  It waits for at most
``LOCAL_WAIT`` seconds, then reads the store as before: an end marker that
another process writes (a cancellation from elsewhere) reaches it that way.
A writer whose processor ends, and a run stopped in this runtime, wake their
waiting readers at once, which then read the store.

Entries are handed over only in order: a reader that is behind what the
local writer has already written (it started reading late) reads the store,
and so does one whose last entry is not the one just before a flush's first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

__all__ = ["LOCAL_WAIT", "LocalReader", "LocalStreams"]

#: The longest a reader waits for a local writer before it reads the store.
LOCAL_WAIT = 0.25


class LocalReader(Protocol):
    """A reader that may wait here (``datagraph.streams.StreamReader``)."""

    def take_local(self, key: str, entries: Sequence[tuple[int, bytes, bytes]]) -> None:
        """Take ``(seq, field, payload)`` entries just written to stream ``key``, in order."""

    def wake(self) -> None:
        """Stop waiting here: read the store instead."""


class LocalStreams:
    """One runtime's streams with a local writer, and the readers waiting for them."""

    def __init__(self) -> None:
        #: Stream key -> number of local writers expected or running (one, in practice).
        self._writers: dict[str, int] = {}
        #: Stream key -> readers waiting for it.
        self._waiting: dict[str, list[LocalReader]] = {}
        #: Stream key -> the seq of the last entry its local writer has put in the store.
        self._written: dict[str, int] = {}
        #: Entries handed over, and waits begun (for tests and benchmarks).
        self.handed = 0
        self.waits = 0

    def expect(self, keys: Iterable[str]) -> None:
        """Streams a processor about to start here will write."""
        writers = self._writers
        for key in keys:
            writers[key] = writers.get(key, 0) + 1

    def done(self, keys: Iterable[str]) -> None:
        """The processor writing ``keys`` has ended: whoever still waits reads the store."""
        writers = self._writers
        for key in keys:
            count = writers.get(key, 0) - 1
            if count > 0:
                writers[key] = count
            else:
                writers.pop(key, None)
                self._written.pop(key, None)
            for reader in self._waiting.get(key, ()):
                reader.wake()

    def all_local(self, keys: Iterable[str]) -> bool:
        writers = self._writers
        return bool(writers) and all(key in writers for key in keys)

    def wrote(self, key: str, seq: int) -> None:
        """The local writer of ``key`` has put its entries up to ``seq`` in the store."""
        if key in self._writers:
            self._written[key] = seq

    def written(self, key: str) -> int:
        """The seq of the last entry the local writer of ``key`` has put in the store (0: none)."""
        return self._written.get(key, 0)

    def wait(self, reader: LocalReader, keys: Sequence[str]) -> None:
        self.waits += 1
        for key in keys:
            self._waiting.setdefault(key, []).append(reader)

    def unwait(self, reader: LocalReader, keys: Sequence[str]) -> None:
        for key in keys:
            readers = self._waiting.get(key)
            if readers is None:
                continue
            if reader in readers:
                readers.remove(reader)
            if not readers:
                del self._waiting[key]

    def any_writer(self) -> bool:
        return bool(self._writers)

    def any_waiting(self) -> bool:
        return bool(self._waiting)

    def waiting(self, key: str) -> bool:
        return key in self._waiting

    def hand_over(self, key: str, entries: Sequence[tuple[int, bytes, bytes]]) -> None:
        """Entries just written to stream ``key`` (``(seq, field, payload)``), to its waiting readers."""
        for reader in list(self._waiting.get(key, ())):
            reader.take_local(key, entries)
            self.handed += len(entries)

    def wake_run(self, prefix: str) -> None:
        """Wake the readers waiting for streams whose key starts with ``prefix`` (a run stopped)."""
        for key, readers in list(self._waiting.items()):
            if key.startswith(prefix):
                for reader in list(readers):
                    reader.wake()
