"""IO handles: the streams a processor reads and a caller receives.

Every IO is a stream kept in the store.  Each reader starts from the
beginning, so a stream can be read any number of times while (and after) it
is written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

import anyio.from_thread

from .exceptions import EmptyStreamError
from .streams import END, StreamReader, StreamWriter

if TYPE_CHECKING:
    from .context import Context

__all__ = ["IO", "IOBatch", "IOVal", "SyncIO"]

T = TypeVar("T")


class IOVal(NamedTuple, Generic[T]):
    """One value for the stream ``name``: ``yield IOVal(name="bar", value=1)``."""

    name: str
    value: T


class IOBatch(NamedTuple, Generic[T]):
    """Many values for the stream ``name`` at once: ``yield IOBatch(name="bar", values=[1, 2])``.

    The same as yielding ``IOVal(name, v)`` for each ``v`` of ``values`` in
    order (readers see the same values, backpressure and counts are the
    same), without a Python step per value.  ``values`` is any finite
    iterable: a list, a tuple, a ``range``, a generator expression.  Read
    the other way round with :meth:`IO.batches`.
    """

    name: str
    values: Iterable[T]


class _NoPad:
    def __repr__(self) -> str:
        return "<no padding>"


_NOPAD: Any = _NoPad()


class BatchReader(Protocol):
    """What the iterators read from: ``(io, values)`` and ``(io, END)`` (a StreamReader)."""

    async def __anext__(self) -> tuple[str, Any]: ...

    async def aclose(self) -> None: ...


class Attempts(Protocol):
    """The attempts of a retried run, as its IO handles see them (``datagraph.retries.RunAttempts``)."""

    def reader(self, ios: list[str], *, reader: str | None, producers: dict[str, str]) -> BatchReader:
        """A reader of ``ios`` that follows the run from attempt to attempt."""
        ...


class IO(Generic[T]):
    """A stream of one run, read through the store.

    ``await io.first()``, ``async for v in io.stream()``, ``io.stream_with(*others)``
    (zip), ``io.as_available(*others)`` (merge), ``await io.collect()``,
    ``io.batches()`` (lists of values as written: the fastest way to read).
    Every call reads the stream from its beginning.
    """

    __slots__ = ("_attempts", "_given", "_producers", "_reader", "_supervisor", "_writer", "name", "run_id")

    def __init__(
        self,
        supervisor: Context,
        run_id: str,
        name: str,
        *,
        reader: str | None = None,
        producers: dict[str, str] | None = None,
        writer: StreamWriter | None = None,
        attempts: Attempts | None = None,
        given: Mapping[str, Sequence[tuple[str, str, bytes]]] | None = None,
    ) -> None:
        self._supervisor = supervisor
        #: Entries of streams in hand (a run's inputs, ``Plan.given``): read without the store.
        self._given = given
        self._attempts = attempts
        self._writer = writer
        self.run_id = run_id
        self.name = name
        self._reader = reader
        self._producers = producers or {}

    def __repr__(self) -> str:
        return f"<IO {self.name!r} of run {self.run_id}>"

    async def _open(self, ios: list[str]) -> BatchReader:
        if self._attempts is not None:
            # A retried run: the reader follows its attempts (datagraph.retries).
            return self._attempts.reader(ios, reader=self._reader, producers=self._producers)
        runtime = await self._supervisor.runtime()
        return StreamReader(
            runtime,
            self.run_id,
            ios,
            reader=self._reader,
            producers=self._producers,
            writer=self._writer,
            given=self._given,
        )

    def _names_with(self, others: tuple[IO[Any], ...]) -> list[str]:
        for other in others:
            if not isinstance(other, IO):
                raise TypeError(f"expected IO objects, got {other!r}")
            if other.run_id != self.run_id:
                raise ValueError(f"{other!r} belongs to another run than {self!r}")
        names = [self.name, *(o.name for o in others)]
        if len(set(names)) != len(names):
            raise ValueError(f"the same IO is given twice: {names}")
        return names

    def batches(self) -> _Batches[T]:
        """The stream's values as written, one list per entry (the fastest way to read)."""
        return _Batches(self, [self.name])

    def stream(self) -> _Values[T]:
        """Every value of the stream, in order, as it is written."""
        return _Values(self)

    def __aiter__(self) -> _Values[T]:
        return self.stream()

    async def first(self) -> T:
        """The first value of the stream (waits for it)."""
        values = self.stream()
        try:
            return await values.__anext__()
        except StopAsyncIteration:
            raise EmptyStreamError(
                f"stream {self.name!r} of run {self.run_id} ended without a value",
                run_id=self.run_id,
            ) from None
        finally:
            await values.aclose()

    async def collect(self) -> list[T]:
        """All values of the stream, once it is complete."""
        out: list[T] = []
        async for values in self.batches():
            out.extend(values)
        return out

    def stream_with(self, *others: IO[Any], pad: Any = _NOPAD) -> _Zip:
        """Zip this stream with ``others``: tuples of their i-th values.

        Stops when the shortest stream ends, unless ``pad`` is given: then it
        runs to the end of the longest, filling in for ended streams with ``pad``.
        """
        return _Zip(self, self._names_with(others), pad)

    def as_available(self, *others: IO[Any]) -> _Merge:
        """Merge this stream with ``others``: ``IOVal(name, value)`` in arrival order."""
        return _Merge(self, self._names_with(others))


class _Reading:
    """Base of the iterators: opens the reader lazily, closes it at the end."""

    def __init__(self, io: IO[Any], names: list[str]) -> None:
        self._io = io
        self._names = names
        self._reader: BatchReader | None = None

    async def _next_batch(self) -> tuple[str, Any]:
        if self._reader is None:
            self._reader = await self._io._open(self._names)
        return await self._reader.__anext__()

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Batches(_Reading, Generic[T]):
    def __aiter__(self) -> _Batches[T]:
        return self

    async def __anext__(self) -> list[T]:
        while True:
            _, values = await self._next_batch()
            if values is not END:
                return values  # type: ignore[no-any-return]


def _exhausted() -> Any:
    raise IndexError


class _Values(_Reading, Generic[T]):
    def __init__(self, io: IO[T]) -> None:
        super().__init__(io, [io.name])
        #: The next value of the batch in hand (the per-value hot path: one C call).
        #: The batch is a deque taken from the front, so a value handed out is held
        #: by the consumer only: it goes as soon as the consumer is done with it,
        #: rather than with the whole batch.
        self._take: Callable[[], T] = _exhausted

    def __aiter__(self) -> _Values[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return self._take()
        except IndexError:
            pass
        while True:
            _, values = await self._next_batch()
            if values is END:
                continue
            batch: list[T] = values
            self._take = take = deque(batch).popleft
            try:
                return take()
            except IndexError:
                continue  # an empty batch


class _Zip(_Reading):
    def __init__(self, io: IO[Any], names: list[str], pad: Any) -> None:
        super().__init__(io, names)
        self._pad = pad
        self._queues: dict[str, deque[Any]] = {n: deque() for n in names}
        self._ended: set[str] = set()
        #: Tuples already zipped: a batch is zipped at once, not value by value.
        self._ready: deque[tuple[Any, ...]] = deque()

    def __aiter__(self) -> _Zip:
        return self

    async def __anext__(self) -> tuple[Any, ...]:
        ready = self._ready
        if ready:
            return ready.popleft()
        queues, names, pad = self._queues, self._names, self._pad
        while True:
            columns = [queues[n] for n in names]
            if all(columns):
                count = min(map(len, columns))
                popleft = [q.popleft for q in columns]
                ready.extend(zip(*([take() for _ in range(count)] for take in popleft), strict=True))
                return ready.popleft()
            exhausted = [n for n in names if n in self._ended and not queues[n]]
            if exhausted:
                if pad is _NOPAD or len(exhausted) == len(names):
                    await self.aclose()  # stopped at the shortest input: give the reader back
                    raise StopAsyncIteration
                if all(queues[n] or n in self._ended for n in names):
                    return tuple(queues[n].popleft() if queues[n] else pad for n in names)
            try:
                io, values = await self._next_batch()
            except StopAsyncIteration:
                self._ended.update(names)
                continue
            if values is END:
                self._ended.add(io)
            else:
                queues[io].extend(values)


class _Merge(_Reading):
    def __init__(self, io: IO[Any], names: list[str]) -> None:
        super().__init__(io, names)
        self._ready: deque[IOVal[Any]] = deque()

    def __aiter__(self) -> _Merge:
        return self

    async def __anext__(self) -> IOVal[Any]:
        while not self._ready:
            io, values = await self._next_batch()
            if values is not END:
                self._ready.extend(IOVal(io, v) for v in values)
        return self._ready.popleft()


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
        batches = self.batches()
        try:
            for values in batches:
                yield from values
        finally:
            batches.close()

    def batches(self) -> Generator[list[T], None, None]:
        """The stream's values as written, one list per entry (see :meth:`IO.batches`)."""
        batches = self._io.batches()
        try:
            while True:
                try:
                    values = anyio.from_thread.run(batches.__anext__)
                except StopAsyncIteration:
                    return
                yield values
        finally:
            anyio.from_thread.run(batches.aclose)

    def __iter__(self) -> Iterator[T]:
        return self.stream()
