"""Exactly once at the caller: a stream reader that follows a retried run's attempts."""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from blake3 import blake3

from ..exceptions import ProcessorFailed, RetryMismatchError, RunCancelled, StoreError
from ..store import keys
from ..store.client import pipeline, refused
from ..store.client import reply_text as _text
from ..streams import BATCH, END, MARKER, StreamReader

if TYPE_CHECKING:
    from ..context import Context

__all__ = ["Followed", "RetryingReader"]


class Followed(Protocol):
    """A retried run's attempts, as its readers follow them (:class:`~datagraph.retries.RunAttempts`)."""

    @property
    def supervisor(self) -> Context: ...

    @property
    def origin(self) -> str:
        """The run id ``start_flow`` returned (the first attempt's)."""
        ...

    @property
    def current(self) -> str:
        """The run id of the attempt to read now."""
        ...

    async def after_failure(self, run_id: str, cause: BaseException) -> str:
        """Attempt ``run_id`` failed with ``cause``: the run id to read from now on (or raise)."""
        ...


class RetryingReader:
    """A stream reader that follows a retried run's attempts, delivering each value once.

    It reads like :class:`~datagraph.streams.StreamReader` (``(io, values)``,
    ``(io, END)``) from the current attempt; when that attempt fails with a
    retried cause it reads the next attempt, skipping (and verifying) the
    values of each output it has already delivered.
    """

    def __init__(
        self,
        attempts: Followed,
        ios: Sequence[str],
        *,
        reader: str | None,
        producers: Mapping[str, str],
    ) -> None:
        self._attempts = attempts
        self._ios = list(dict.fromkeys(ios))
        self._reader_name = reader
        self._producers = producers
        self._run_id = attempts.current
        self._stream: StreamReader | None = None
        #: Values of each io handed out so far (over every attempt).
        self._delivered = dict.fromkeys(self._ios, 0)
        #: The attempt whose stream holds every value delivered so far, per io.
        self._source = dict.fromkeys(self._ios, self._run_id)
        #: Per io being verified: values still to skip, their digest so far, the expected one.
        self._skip: dict[str, int] = {}
        self._digest: dict[str, Any] = {}
        self._expected: dict[str, bytes] = {}
        self._ended: set[str] = set()

    async def _open(self) -> StreamReader:
        if self._stream is None:
            runtime = await self._attempts.supervisor.runtime()
            self._stream = StreamReader(
                runtime, self._run_id, [io for io in self._ios if io not in self._ended],
                reader=self._reader_name, producers=self._producers,
            )
        return self._stream

    def __aiter__(self) -> RetryingReader:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        while True:
            stream = await self._open()
            try:
                io, values = await stream.__anext__()
            except StopAsyncIteration:
                raise
            except (ProcessorFailed, StoreError, RunCancelled) as exc:
                await self._follow(exc)
                continue
            if values is END:
                if self._skip.get(io):
                    self._mismatch(io, f"it ended after {self._delivered[io] - self._skip[io]} values")
                self._ended.add(io)
                return io, values
            if self._skip.get(io):
                values = self._verify(io, values)
                if not values:
                    continue
            self._delivered[io] += len(values)
            return io, values

    async def _follow(self, cause: BaseException) -> None:
        failed = self._run_id
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        # Raises the failure itself when it is not retried (or no attempt is left).
        self._run_id = await self._attempts.after_failure(failed, cause)
        for io in self._ios:
            if io in self._ended or not self._delivered[io]:
                self._skip.pop(io, None)
                if io not in self._ended:
                    self._source[io] = self._run_id
                continue
            self._skip[io] = self._delivered[io]
            self._digest[io] = blake3()
            self._expected[io] = await self._delivered_digest(io)

    async def _delivered_digest(self, io: str) -> bytes:
        """The digest of the values of ``io`` delivered so far, read back from their attempt."""
        runtime = await self._attempts.supervisor.runtime()
        source, wanted = self._source[io], self._delivered[io]
        key = keys.stream(source, io)
        digest = blake3()
        count, start = 0, "-"
        where = f"{io!r} of attempt {source}"
        while count < wanted:
            (reply,), _ = await pipeline(
                runtime.client, [["XRANGE", key, start, "+", "COUNT", "256"]],
                retry_for=runtime.settings.reconnect_timeout,
                doing=f"reading back the values of {where} delivered before a retry",
            )
            refused([reply], f"reading {where}")
            entries = _entries(reply)
            if not entries:
                break
            for entry_id, field, payload in entries:
                start = f"({entry_id}"
                if field != BATCH:
                    continue
                for value in runtime.codec.decode_batch(payload, where)[: wanted - count]:
                    digest.update(_encoded(value))
                    count += 1
            if field == MARKER:
                break
        if count < wanted:
            raise RetryMismatchError(
                f"run {self._attempts.origin} was retried, but the {wanted} values of output {io!r} "
                f"already delivered can no longer be read back from attempt {source} (the store "
                f"lost them: it has {count}), so the new attempt cannot be checked against them; "
                "nothing more is delivered rather than risk a duplicate or a gap",
                run_id=self._attempts.origin,
            )
        return digest.digest()

    def _verify(self, io: str, values: list[Any]) -> list[Any]:
        skip = self._skip[io]
        head, rest = values[:skip], values[skip:]
        digest = self._digest[io]
        for value in head:
            digest.update(_encoded(value))
        self._skip[io] = skip - len(head)
        if self._skip[io] == 0:
            if digest.digest() != self._expected[io]:
                self._mismatch(io, "its values differ")
            self._source[io] = self._run_id
            del self._skip[io]
        return rest

    def _mismatch(self, io: str, how: str) -> None:
        raise RetryMismatchError(
            f"run {self._attempts.origin} was retried after {self._delivered[io]} values of output "
            f"{io!r} were delivered, but attempt {self._run_id} did not produce the same first "
            f"{self._delivered[io]} values ({how}); a retried flow must be deterministic (the same "
            "inputs give the same values in the same order), or run it with retries=0",
            run_id=self._attempts.origin,
        )

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()


def _encoded(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def _entries(reply: Any) -> list[tuple[str, str, bytes]]:
    """``XRANGE`` entries as (id, field, payload), whatever shape the client returns."""
    items = reply.items() if isinstance(reply, dict) else reply
    out = []
    for raw_id, fields in items:
        if isinstance(fields, dict):
            field, payload = next(iter(fields.items()))
        elif fields and isinstance(fields[0], list | tuple):
            field, payload = fields[0]
        else:
            field, payload = fields[0], fields[1]
        out.append((_text(raw_id), _text(field), payload))
    return out
