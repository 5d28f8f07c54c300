"""IO handles: the streams a processor reads and a caller receives.

Every IO is a stream kept in the store.  Each reader starts from the
beginning, so a stream can be read any number of times while (and after) it
is written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import anyio.from_thread

from .exceptions import EmptyStreamError
from .streams import END, StreamReader

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["IO", "IOVal", "SyncIO"]

T = TypeVar("T")


class IOVal(NamedTuple, Generic[T]):
    """One value for the stream ``name``: ``yield IOVal(name="bar", value=1)``."""

    name: str
    value: T


class _NoPad:
    def __repr__(self) -> str:
        return "<no padding>"


_NOPAD: Any = _NoPad()


class IO(Generic[T]):
    """A stream of one run, read through the store.

    ``await io.first()``, ``async for v in io.stream()``, ``io.stream_with(*others)``
    (zip), ``io.as_available(*others)`` (merge), ``await io.collect()``.
    """

    __slots__ = ("_producers", "_reader", "_supervisor", "name", "run_id")

    def __init__(
        self,
        supervisor: Supervisor,
        run_id: str,
        name: str,
        *,
        reader: str | None = None,
        producers: dict[str, str] | None = None,
    ) -> None:
        self._supervisor = supervisor
        self.run_id = run_id
        self.name = name
        self._reader = reader
        self._producers = producers or {}

    def __repr__(self) -> str:
        return f"<IO {self.name!r} of run {self.run_id}>"

    async def _open(self, ios: list[str]) -> StreamReader:
        runtime = await self._supervisor.runtime()
        return StreamReader(runtime, self.run_id, ios, reader=self._reader, producers=self._producers)

    def _check_same_run(self, others: tuple[IO[Any], ...]) -> list[str]:
        for other in others:
            if not isinstance(other, IO):
                raise TypeError(f"expected IO objects, got {other!r}")
            if other.run_id != self.run_id:
                raise ValueError(f"{other!r} belongs to another run than {self!r}")
        names = [self.name, *(o.name for o in others)]
        if len(set(names)) != len(names):
            raise ValueError(f"the same IO is given twice: {names}")
        return names

    async def batches(self) -> AsyncIterator[list[T]]:
        """The stream's values as they were written, one list per entry (fastest)."""
        reader = await self._open([self.name])
        async for _, values in reader.batches():
            if values is not END:
                yield values

    async def stream(self) -> AsyncIterator[T]:
        """Every value of the stream, in order, as it is written."""
        async for values in self.batches():
            for value in values:
                yield value

    def __aiter__(self) -> AsyncIterator[T]:
        return self.stream()

    async def first(self) -> T:
        """The first value of the stream (waits for it)."""
        async for value in self.stream():
            return value
        raise EmptyStreamError(
            f"stream {self.name!r} of run {self.run_id} ended without a value", run_id=self.run_id
        )

    async def collect(self) -> list[T]:
        """All values of the stream, once it is complete."""
        out: list[T] = []
        async for values in self.batches():
            out.extend(values)
        return out

    async def stream_with(self, *others: IO[Any], pad: Any = _NOPAD) -> AsyncIterator[tuple[Any, ...]]:
        """Zip this stream with ``others``: tuples of their i-th values.

        Stops when the shortest stream ends, unless ``pad`` is given: then it
        runs to the longest, filling the ended streams with ``pad``.
        """
        names = self._check_same_run(others)
        queues: dict[str, deque[Any]] = {n: deque() for n in names}
        ended: set[str] = set()
        reader = await self._open(names)
        async for io, values in reader.batches():
            if values is END:
                ended.add(io)
            else:
                queues[io].extend(values)
            while all(queues[n] or (n in ended and pad is not _NOPAD) for n in names):
                if all(not queues[n] for n in names):
                    break
                yield tuple(queues[n].popleft() if queues[n] else pad for n in names)
            if pad is _NOPAD and any(n in ended and not queues[n] for n in names):
                return
        while pad is not _NOPAD and any(queues[n] for n in names):
            yield tuple(queues[n].popleft() if queues[n] else pad for n in names)

    async def as_available(self, *others: IO[Any]) -> AsyncIterator[IOVal[Any]]:
        """Merge this stream with ``others``: ``IOVal(name, value)`` in arrival order."""
        names = self._check_same_run(others)
        reader = await self._open(names)
        async for io, values in reader.batches():
            if values is not END:
                for value in values:
                    yield IOVal(io, value)


class SyncIO(Generic[T]):
    """What a sync processor function receives: the IO methods, callable from its thread."""

    __slots__ = ("_io",)

    def __init__(self, io: IO[T]) -> None:
        self._io = io

    @property
    def name(self) -> str:
        return self._io.name

    def first(self) -> T:
        return anyio.from_thread.run(self._io.first)

    def collect(self) -> list[T]:
        return anyio.from_thread.run(self._io.collect)

    def stream(self) -> Iterator[T]:
        """Values as they arrive, fetched batch by batch from the event loop."""
        batches = self._io.batches()
        try:
            while True:
                try:
                    values = anyio.from_thread.run(batches.__anext__)
                except StopAsyncIteration:
                    return
                yield from values
        finally:
            anyio.from_thread.run(batches.aclose)

    def __iter__(self) -> Iterator[T]:
        return self.stream()
