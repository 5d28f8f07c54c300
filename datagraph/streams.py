"""Reading and writing the streams of a run.

Writes are batched naturally: yielded values collect in a buffer that a
flusher task sends as one entry whenever it gets to run (that is, whenever
the producer waits for something), or when the size or linger bound is hit.
Reads fetch many entries per ``XREAD``.  Each flush also reads the positions
of the stream's in-flow readers, so backpressure costs no extra round trip
until a writer actually has to wait.  A processor's flusher task is started
only once it has something to send before the processor ends
(:mod:`datagraph.flushers`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import anyio
from glide import GlideError as GlideBaseError

from ._backend import Wake
from .exceptions import (
    BadValueError,
    ProcessorFailed,
    RunCancelled,
    StoreError,
    StreamIdleTimeout,
)
from .flushers import FlusherStarter
from .local_streams import LOCAL_WAIT
from .parked import Parked
from .runtime import Runtime
from .store import gaps, keys
from .store.client import Reconnecting, describe, exec_batch, is_cluster, is_transient, new_batch, pipeline
from .store.fold import fold
from .store.scripts import is_script, lost_run_error, sample_history_command

__all__ = [
    "END",
    "StreamReader",
    "StreamWriter",
    "failure_error",
    "marker_error",
    "merge_hsets",
    "run_error",
]

#: Field names of stream entries: a batch of values, or an end marker.
BATCH = "b"
MARKER = "e"

#: Awaited as ``hook(runtime, run_id, open_ios, producers)`` each time a blocking
#: read comes back empty; ``datagraph.liveness`` checks the producers' workers here.
IdleHook = Callable[[Runtime, str, list[str], Mapping[str, str]], Awaitable[None]]
idle_hooks: list[IdleHook] = []

log = logging.getLogger("datagraph.streams")

#: A flush whose entries weigh at most this is a small one: it may carry its run's
#: record (a large write waits for the record instead: one that Valkey refuses, for
#: want of memory, must not take the record down with it), and its commands go as
#: one script call (datagraph.store.fold).
SMALL_FLUSH_BYTES = 64 * 1024

_BATCH_B = BATCH.encode()
_MARKER_B = MARKER.encode()


class _End:
    def __repr__(self) -> str:
        return "END"


END = _End()


def marker_error(marker: Mapping[str, Any], run_id: str) -> Exception | None:
    """The exception an end marker stands for, or None for a clean end."""
    status = marker.get("status")
    if status == "ok":
        return None
    if status == "cancelled":
        return RunCancelled(f"run {run_id} was cancelled", run_id=run_id)
    return failure_error(marker, run_id)


def run_error(raw: bytes | str | None) -> dict[str, Any]:
    """A failed run's ``error`` record (processor, type, message, ...); empty if unreadable."""
    try:
        error = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return error if isinstance(error, dict) else {}


def failure_error(failure: Mapping[str, Any], run_id: str) -> ProcessorFailed:
    """The error a failure record stands for (a failure marker, or a failed run's ``error``)."""
    return ProcessorFailed(
        str(failure.get("processor", "?")),
        str(failure.get("type", "Error")),
        str(failure.get("message", "")),
        str(failure.get("traceback", "")),
        run_id=run_id,
        worker=failure.get("worker"),
    )


def entry_id(seq: int) -> str:
    """The stream id of a writer's ``seq``-th entry (1-based): ``0-<seq>``."""
    return f"0-{seq}"


def _state_reply(reply: Any, run_id: str) -> tuple[Any, Any]:
    """A run's ``state`` and ``error`` from their ``HMGET``; a run with no record is lost."""
    if isinstance(reply, GlideBaseError):
        raise StoreError(f"Valkey refused to read the state of run {run_id}: {reply}")
    state, error = reply
    if state is None:
        raise lost_run_error(run_id)
    return state, error


def store_error(exc: GlideBaseError, doing: str) -> StoreError:
    return StoreError(f"Valkey refused or lost the connection while {doing}: {describe(exc)}")


class Clock:
    """Where one processor's time goes: waiting for input, or for its readers.

    Shared by the processor's readers and its writer; the writer publishes
    it (with per-output rates) as part of its normal flushes.
    """

    __slots__ = ("backpressured", "idle", "started")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.idle = 0.0
        self.backpressured = 0.0

    def busy(self, now: float) -> float:
        return max(0.0, now - self.started - self.idle - self.backpressured)


class StreamReader:
    """Reads one or more streams of a run from the beginning, batch by batch.

    An async iterator of ``(io, values)``, then ``(io, END)`` when a stream
    ends; it raises the failure a stream ended with (``ProcessorFailed``,
    ``RunCancelled``) or ``StreamIdleTimeout``.  ``reader`` names the
    processor reading (its positions are published with each fetch, so
    writers can apply backpressure); ``None`` reads without publishing.

    ``writer`` is the reading processor's own writer, if any: the reader
    charges its waits to the writer's clock and hands its closing read
    positions to the writer's next flush instead of a round trip of its own
    (``first()`` on an input then costs one round trip, not two).  The
    caller's reader (``reader`` is ``keys.OUTPUT_READER``) and a reader of
    streams it read to their end hold no writer back: they park their
    closing positions in the runtime (:mod:`datagraph.parked`), and every
    read carries what is parked there.

    It is a plain class rather than an async generator so that a reader
    abandoned half way returns its store client to the pool when collected.
    """

    def __init__(
        self,
        runtime: Runtime,
        run_id: str,
        ios: Sequence[str],
        *,
        reader: str | None = None,
        producers: Mapping[str, str] | None = None,
        writer: StreamWriter | None = None,
        given: Mapping[str, Sequence[tuple[str, str, bytes]]] | None = None,
    ) -> None:
        self._rt = runtime
        self._run_id = run_id
        self._writer = writer
        self._clock = writer.clock if writer is not None else None
        ios = list(dict.fromkeys(ios))
        self._reader = reader
        self._producers = producers or {}
        self._key_of = {io: keys.stream(run_id, io) for io in ios}
        self._io_of = {k.encode(): io for io, k in self._key_of.items()}
        #: Set while waiting for a writer of this runtime (datagraph.local_streams).
        self._local_wake: Wake | None = None
        self._took_local = False
        self._local_ok = runtime.settings.hand_over_local
        self._last_id = {io: "0-0" for io in ios}
        self._consumed = dict.fromkeys(ios, 0)
        self._dirty: set[str] = set()
        self._open = ios
        now = time.monotonic()
        self._last_seen = dict.fromkeys(ios, now)
        #: ``(io, payload)`` of entries fetched but not yet handed out (decoded as they
        #: are handed out: see :meth:`__anext__`), and ``(io, END)`` for a stream's end.
        self._pending: deque[tuple[str, Any]] = deque()
        self._handed: tuple[str, int] | None = None
        self._client: Any = None
        self._release: Any = None
        #: Reading on the shared client without BLOCK (the blocking pool is full).
        self._polling = False
        self._poll_delay = 0.001
        self._error: BaseException | None = None
        settings = runtime.settings
        self._ttl = str(int(settings.max_run_duration))
        self._head = [
            "XREAD",
            "COUNT",
            str(settings.read_count),
            "BLOCK",
            str(max(1, int(settings.read_block * 1000))),
            "STREAMS",
        ]
        if given:
            self._take_given(given)

    def _take_given(self, given: Mapping[str, Sequence[tuple[str, str, bytes]]]) -> None:
        """Take the streams whose entries are in hand (a run's inputs, ``Plan.given``) as read.

        They are the entries the store holds, decoded the same way, so the reader
        delivers, counts and publishes them exactly as if one XREAD had returned
        them all; only the round trip is saved.
        """
        codec = self._rt.codec
        for io in list(self._open):
            entries = given.get(io)
            if entries is None:
                continue
            where = f"{io!r} of run {self._run_id}"
            for entry, field, payload in entries:
                self._last_id[io] = entry
                if field == BATCH:
                    self._pending.append((io, payload))
                    continue
                self._open.remove(io)
                error = marker_error(codec.decode_marker(payload, where), self._run_id)
                self._ended(io, error)
                if error is not None:
                    return
                break

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        handed = self._handed
        if handed is not None:
            # The consumer asked for more: what it was handed counts as read.
            self._consumed[handed[0]] += handed[1]
            self._dirty.add(handed[0])
            self._handed = None
        while not self._pending:
            if self._error is not None:
                raise self._error
            if not self._open:
                await self.aclose()
                raise StopAsyncIteration
            await self._fetch()
        io, payload = self._pending.popleft()
        if payload is END:
            return io, END
        # Decoded only now, one entry at a time: a fetch can bring hundreds of entries,
        # and decoding them all at once would keep every value of them alive together
        # (the garbage collector walks them all, again and again, while they wait).
        try:
            values = self._rt.codec.decode_batch(payload, f"{io!r} of run {self._run_id}")
        except Exception as exc:
            # A refused entry ends the reading: nothing after it is handed out.
            self._error = exc
            self._pending.clear()
            self._open = []
            raise
        self._handed = (io, len(values))
        return io, values

    async def _fetch(self) -> None:
        open_ios = self._open
        if self._local_ok:
            # No positions to publish (or entries in hand whose write is on its way): if
            # every stream waited for is written in this runtime, wait for its writer to
            # hand the entries over (no round trip).
            open_keys = [self._key_of[io] for io in open_ios]
            publish = self._dirty and self._reader is not None
            local = (
                self._rt.local.all_local(open_keys)
                and self._caught_up(open_keys)
                and (not publish or self._ahead(open_keys))
            )
            if local and await self._wait_local(open_keys):
                return
        command = [
            *self._head,
            *(self._key_of[io] for io in open_ios),
            *(self._last_id[io] for io in open_ios),
        ]
        started = time.monotonic()
        reply = await self._read(command)
        now = time.monotonic()
        if self._clock is not None:
            self._clock.idle += now - started
        if not reply:
            if self._polling:
                await anyio.sleep(self._poll_delay)
                self._poll_delay = min(self._poll_delay * 2, 0.05)
                # Poll again on a blocking client if one has come free meanwhile.
                self._client = None
            self._check_idle(now)
            for hook in idle_hooks:
                await hook(self._rt, self._run_id, self._open, self._producers)
            return
        self._poll_delay = 0.001
        codec = self._rt.codec
        run_id = self._run_id
        for raw_key, entries in reply.items():
            io = self._io_of[raw_key]
            self._last_seen[io] = now
            where = f"{io!r} of run {run_id}"
            for raw_id, fields in entries.items():
                entry = raw_id.decode()
                # Entries missing before this one: trimmed, or lost (a failover); a failure
                # marker explains its own gap (the writes that failed left it).
                gap = gaps.skipped(self._last_id[io], entry)
                self._last_id[io] = entry
                field, payload = fields[0]
                if field == _BATCH_B:
                    if gap:
                        await gaps.check(self._rt.client, self._key_of[io], entry, where)
                    self._pending.append((io, payload))
                elif field == _MARKER_B:
                    marker = codec.decode_marker(payload, where)
                    open_ios.remove(io)
                    error = marker_error(marker, run_id)
                    if gap and error is None:
                        await gaps.check(self._rt.client, self._key_of[io], entry, where)
                    self._ended(io, error)
                    if error is not None:
                        return
                    break

    def _ended(self, io: str, error: BaseException | None) -> None:
        """Stream ``io`` has ended (and left the open ones), with ``error`` if it failed."""
        if error is None:
            self._pending.append((io, END))
        else:
            # Values before the failure are still delivered, then it raises.
            self._error = error
            self._open = []

    def _caught_up(self, open_keys: list[str]) -> bool:
        """Whether this reader has every entry the local writers have written: only then
        can what it waits for come from their next flushes."""
        local = self._rt.local
        for key in open_keys:
            last = self._last_id[self._io_of[key.encode()]]
            if not last.startswith("0-") or local.written(key) > int(last[2:]):
                return False  # behind (or past an entry from elsewhere): read the store
        return True

    def _ahead(self, open_keys: list[str]) -> bool:
        """Whether this reader holds entries whose pipeline's reply has not come yet (they were
        handed over as it went out): that reply hands over what follows them, or wakes it."""
        written = self._rt.local.written
        return any(int(self._last_id[self._io_of[key.encode()]][2:]) > written(key) for key in open_keys)

    async def _wait_local(self, open_keys: list[str]) -> bool:
        """Wait for a local writer's entries (datagraph.local_streams); False: read the store."""
        local = self._rt.local
        writer = self._writer
        self._took_local = False
        self._local_wake = wake = self._rt.host.wake()
        local.wait(self, open_keys)
        if writer is not None:
            writer.holding = True
        started = time.monotonic()
        try:
            await wake.wait(LOCAL_WAIT)
        finally:
            local.unwait(self, open_keys)
            self._local_wake = None
            if writer is not None:
                writer.holding = False
                writer.clock.idle += time.monotonic() - started
        if writer is not None and self._took_local:
            # Otherwise the read that follows takes the writer's queued commands.
            writer.wake_for_riders()
        return self._took_local

    def take_local(self, key: str, entries: Sequence[tuple[int, bytes, bytes]]) -> None:
        """Entries a writer of this runtime has just written to stream ``key``, as if read."""
        wake = self._local_wake
        io = self._io_of.get(key.encode())
        if wake is None or io is None or io not in self._open:
            return
        last = self._last_id[io]
        if last.startswith("0-"):
            # Batches handed over as their pipeline went out come again with its reply.
            taken = int(last[2:])
            if entries[-1][0] <= taken:
                wake.set()  # nothing new: the reader goes on to the store
                return
            if entries[0][0] <= taken:
                entries = [entry for entry in entries if entry[0] > taken]
        if last != entry_id(entries[0][0] - 1):
            wake.set()  # not the entries right after this reader's: read the store
            return
        self._last_seen[io] = time.monotonic()
        self._took_local = True
        wake.set()
        where = f"{io!r} of run {self._run_id}"
        for seq, field, payload in entries:
            self._last_id[io] = entry_id(seq)
            if field == _BATCH_B:
                self._pending.append((io, payload))
                continue
            self._open.remove(io)
            error: BaseException | None
            try:
                error = marker_error(self._rt.codec.decode_marker(payload, where), self._run_id)
            except Exception as exc:  # refused: raised to the reader, not to the writer
                error = exc
            self._ended(io, error)
            return

    def wake(self) -> None:
        if self._local_wake is not None:
            self._local_wake.set()

    async def _read(self, command: list[str]) -> Any:
        """One XREAD (with the run's existence check and pending positions) in one round trip.

        A lost connection is retried for ``reconnect_timeout`` from the same
        positions, so a reader survives a Valkey restart without losing or
        repeating a value; if the run's data did not survive, it says so.
        """
        riders: list[list[str]] = []
        if self._rt.recording:
            await self._rt.recorded(self._run_id)  # a run starting here: after its record
        # Callers' read positions parked in this runtime ride along (datagraph.parked).
        parked = self._rt.parked.take() if self._rt.parked else {}
        try:
            return await self._read_with(command, riders, parked)
        except BaseException:
            self._rt.parked.restore(parked)  # sent again by the next read, or the publisher
            raise

    async def _read_with(self, command: list[str], riders: list[list[str]], parked: Parked) -> Any:
        run_id = self._run_id
        retry = Reconnecting(self._rt.settings.reconnect_timeout)
        parked_commands = self._rt.parked.commands(parked)
        while True:
            if self._client is None:
                if self._rt.pool.full():
                    # Every blocking connection is taken: read without blocking on the
                    # shared client, and back off between empty reads (see _fetch).
                    self._client, self._release, self._polling = self._rt.client, None, True
                else:
                    try:
                        self._client, self._release = await self._rt.pool.acquire(self)
                    except StoreError:
                        # No new connection (the store is restarting, or gone): like a lost
                        # one, tried again until reconnect_timeout, then raised.
                        if retry.expired():
                            raise
                        await retry.wait()
                        continue
                    self._polling = False
            if self._polling:
                command = [*command[:3], *command[5:]]  # the same XREAD without BLOCK
            batch = new_batch(self._client)
            batch.custom_command(["EXISTS", keys.run(run_id)])
            publish = bool(self._dirty) and self._reader is not None
            if publish:
                batch.custom_command(["HSET", keys.pos(run_id), *self._position_fields()])
                batch.custom_command(["EXPIRE", keys.pos(run_id), self._ttl, "NX"])
            if self._writer is not None:
                # What waits for the writer's next flush (the processor's "running"
                # state, at its start) goes now: this read is the sooner round trip.
                riders += self._writer.take_riders()
            for rider in riders:
                batch.custom_command(rider)
            parked_at = len(batch)
            for rider in parked_commands:
                batch.custom_command(rider)
            parked_end = len(batch)
            # A processor that only reads (a sink) reports its time split here.
            status = self._writer.status_commands() if self._writer is not None else []
            for extra in status:
                batch.custom_command(extra)
            batch.custom_command(command)
            sample_at = len(batch) - 2 if status and is_script(status[-1]) else -1
            try:
                result = await exec_batch(self._client, batch, raise_on_error=False)
                for index, reply in enumerate(result):
                    if not isinstance(reply, GlideBaseError):
                        continue
                    if index == sample_at and self._writer is not None:
                        self._writer.history_failed(reply)  # the run goes on without it
                        continue
                    if parked_at <= index < parked_end:
                        # Another run's telemetry: not this reader's failure. The
                        # publisher task sends it again (and says so if it fails).
                        if parked_commands:
                            self._rt.parked.restore(parked)
                            parked_commands = []
                        continue
                    raise reply  # handled below, as if the batch had raised it
            except BaseException as exc:
                # Interrupted mid-command: the client may still get this reply; don't reuse it.
                self._drop_client()
                if not isinstance(exc, GlideBaseError):
                    raise
                if not is_transient(exc) or retry.expired():
                    raise store_error(exc, f"reading {', '.join(self._open)} of run {run_id}") from exc
                await retry.wait()
                continue
            if publish:
                self._dirty = set()
            if not result[0]:
                raise lost_run_error(run_id)
            return result[-1]

    def _drop_client(self) -> None:
        client, release = self._client, self._release
        self._client = self._release = None
        if release is not None and not self._polling:
            release.detach()
            self._rt.pool.discard(client)

    def _position_fields(self) -> list[str]:
        assert self._reader is not None
        fields: list[str] = []
        for io in self._dirty:
            fields += [keys.pos_field(self._reader, io), str(self._consumed[io])]
            fields += [keys.pos_id_field(self._reader, io), self._last_id[io]]
        return fields

    async def aclose(self) -> None:
        """Publish the final read positions and return the store client."""
        if self._handed is not None:
            self._consumed[self._handed[0]] += self._handed[1]
            self._dirty.add(self._handed[0])
            self._handed = None
        release, self._release = self._release, None
        self._client = None
        if release is not None:
            release()
        if self._dirty and self._reader is not None:
            fields = self._position_fields()
            # No writer waits for these positions: the caller's (writers are held back
            # by in-flow readers only), or streams read to their end (nothing more is
            # written to them). They wait for a later round trip (datagraph.parked).
            parkable = self._reader == keys.OUTPUT_READER or self._dirty.isdisjoint(self._open)
            self._dirty = set()
            if parkable and self._writer is None:
                self._rt.parked.park(keys.pos(self._run_id), fields)
                return  # no round trip here: first() returns at once
            commands = [
                ["HSET", keys.pos(self._run_id), *fields],
                ["EXPIRE", keys.pos(self._run_id), self._ttl, "NX"],
            ]
            if self._writer is not None and self._writer.send_with_next_flush(commands):
                return  # no round trip here: first() returns at once
            with anyio.CancelScope(shield=True):
                try:
                    batch = new_batch(self._rt.client)
                    for command in commands:
                        batch.custom_command(command)
                    await exec_batch(self._rt.client, batch, raise_on_error=True)
                except GlideBaseError as exc:
                    raise store_error(exc, f"publishing read positions of run {self._run_id}") from exc

    def _check_idle(self, now: float) -> None:
        limit = self._rt.settings.idle_timeout
        for io in self._open:
            if now - self._last_seen[io] > limit:
                producer = self._producers.get(io)
                who = f"its producer {producer!r}" if producer else "its producer"
                raise StreamIdleTimeout(
                    f"stream {io!r} of run {self._run_id}: {who} wrote nothing for "
                    f"{limit:g}s (idle_timeout); it may have hung or died",
                    run_id=self._run_id,
                )


class StreamWriter:
    """Buffers one processor's yielded values and writes them as batches.

    ``outputs`` maps each output IO to the processors that read it in the flow
    (its in-flow readers, whose positions bound the backlog).
    """

    def __init__(
        self,
        runtime: Runtime,
        run_id: str,
        processor: str,
        outputs: Mapping[str, Sequence[str]],
        *,
        max_backlog: int,
        trim: Collection[str] = (),
        unbounded: Collection[str] = (),
        upstream: Collection[str] = (),
        clock: Clock | None = None,
        starter: FlusherStarter | None = None,
    ) -> None:
        self._rt = runtime
        self.clock = clock or Clock()
        self._telemetry = runtime.settings.telemetry
        self._history = runtime.settings.telemetry and runtime.settings.history
        #: The next pipeline should carry a history sample (set with each status publish).
        self._sample_due = False
        self._sample_warned = False
        #: Outputs written since the status was last published (their ``last:<io>`` is due).
        self._moved: set[str] = set()
        # The first status is due half a second in (or at the end, whichever comes
        # first): at the start there is nothing to say, and a short run says it all once.
        self._published_at = time.monotonic()
        self._window = (time.monotonic(), dict.fromkeys(outputs, 0))
        self._run_id = run_id
        self._processor = processor
        self._readers = {io: tuple(r) for io, r in outputs.items()}
        # A failure of one of these reaches this processor through its inputs, after
        # the values written before it: no need to stop early for it.
        self._upstream = frozenset(upstream)
        # Readers that wait for the whole stream (wait=True) cannot bound its backlog:
        # holding the writer back for them would deadlock the partition.
        self._limiting = {io: tuple(x for x in r if x not in unbounded) for io, r in outputs.items()}
        self._max_backlog = max_backlog
        self._trim = set(trim)
        self._max_batch = runtime.settings.max_batch
        self._linger = runtime.settings.linger
        self._keys = {io: keys.stream(run_id, io) for io in outputs}
        self.buffers: dict[str, list[Any]] = {io: [] for io in outputs}
        self.written = dict.fromkeys(outputs, 0)
        self._inflight = dict.fromkeys(outputs, 0)
        self._min_pos = dict.fromkeys(outputs, 0)  # slowest limiting reader
        self._trim_pos = dict.fromkeys(outputs, 0)  # slowest of all readers, and its entry
        self._min_id: dict[str, str | None] = dict.fromkeys(outputs, None)
        self._trimmed_pos = dict.fromkeys(outputs, 0)
        self._seq = dict.fromkeys(outputs, 0)
        # Per-io fill level at which put() returns True (flush or wait needed).
        self.limits = dict.fromkeys(outputs, self._limit_for_empty())
        self.first_at = math.inf
        #: The run ended elsewhere (cancelled, or failed in another processor): stop.
        self.cancelled = False
        self._stop_reason: Exception | None = None
        #: Starts the flusher task when one is needed (None: the owner runs ``run_flusher``).
        self._starter = starter
        #: Wakes the flusher task; None while a starter has not started one.
        self._wake: anyio.Event | None = None if starter is not None else anyio.Event()
        #: The starter has been asked to start the flusher and has not looked yet.
        self._asked = False
        #: Set when the flush in flight ends; made only when someone waits for it.
        self._flushed: anyio.Event | None = None
        self._flushing = False
        self._closed = False
        self._error: BaseException | None = None
        #: Commands of this processor's readers that ride along with the next flush.
        self._riders: list[list[str]] = []
        #: A reader of this processor waits for a local writer: queued commands alone
        #: do not start the flusher meanwhile (see :meth:`start_flusher_if_due`).
        self.holding = False

    def _limit_for_empty(self) -> int:
        if any(self._limiting.values()):
            return max(1, min(self._max_batch, self._max_backlog))
        return self._max_batch

    # -- producer side -------------------------------------------------

    def put(self, io: str, value: Any) -> bool:
        """Buffer one value; True when the caller must ``await make_room(io)``.

        The processor pump inlines this; it is here for the other callers.
        """
        buf = self.buffers.get(io)
        if buf is None:
            raise self.undeclared(io)
        buf.append(value)
        n = len(buf)
        if n == 1:
            self.started_batch()
        return n >= self.limits[io] or self.lingering()

    async def put_many(self, io: str, values: Iterable[Any]) -> None:
        """Buffer ``values`` for ``io`` in order, as one ``put`` each would (same waits for room).

        The values go in as slices up to the buffer's limit, so a batch far
        larger than the backlog limit waits for readers just as value by value.
        """
        buf = self.buffers.get(io)
        if buf is None:
            raise self.undeclared(io)
        if isinstance(values, list):
            pending = values
        elif isinstance(values, str | bytes | bytearray) or not isinstance(values, Iterable):
            raise BadValueError(
                f"processor {self._processor!r} yielded IOBatch({io!r}, ...) with values of type "
                f"{type(values).__name__}; give a list (or another iterable) of the values",
                run_id=self._run_id,
            )
        else:
            pending = list(values)
        start, total = 0, len(pending)
        limits = self.limits
        while start < total:
            room = limits[io] - len(buf)
            if room <= 0:
                await self.make_room(io)
                continue
            was_empty = not buf
            stop = min(total, start + room)
            buf.extend(pending if start == 0 and stop == total else pending[start:stop])
            start = stop
            if was_empty:
                self.started_batch()
            if len(buf) >= limits[io] or self.lingering():
                await self.make_room(io)

    def undeclared(self, io: str) -> BadValueError:
        return BadValueError(
            f"processor {self._processor!r} yielded to {io!r}, which it does not declare "
            f"as an output; its outputs are {sorted(self.buffers)}",
            run_id=self._run_id,
        )

    def started_batch(self) -> None:
        """The first value went into an empty buffer: start the linger clock, wake the flusher."""
        if self.first_at == math.inf:
            self.first_at = time.monotonic()
        self._kick()

    def lingering(self) -> bool:
        return time.monotonic() - self.first_at > self._linger

    async def make_room(self, io: str) -> None:
        """Let the flusher send; wait while ``io``'s slowest in-flow reader is too far behind."""
        self._raise_if_failed()
        if len(self.buffers[io]) < self.limits[io]:
            # Called because values lingered: give the flusher its turn.
            self._kick(now=True)
            await anyio.lowlevel.checkpoint()
            self._raise_if_failed()
            return
        delay = 0.001
        while len(self.buffers[io]) >= self.limits[io]:
            self._raise_if_failed()
            if self.cancelled:
                raise self._stopped()
            if self._flushing:
                await self._flushed_event().wait()
                continue
            if self._room(io) > 0:
                # Room downstream: the buffer is just full. Let the flusher take it
                # (the producer goes on filling a new buffer while it is sent).
                self._kick(now=True)
                await anyio.lowlevel.checkpoint()
                if len(self.buffers[io]) >= self.limits[io] and not self._flushing:
                    await self.flush()
                continue
            # Backlog at the limit: poll the readers' positions with backoff,
            # counting the wait as backpressure as it goes (telemetry sees it live).
            mark = time.monotonic()
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
            self.clock.backpressured += time.monotonic() - mark
            await self._refresh_positions()
        self._raise_if_failed()

    def _room(self, io: str) -> int:
        if not self._limiting[io]:
            return self._max_batch
        ahead = self.written[io] + self._inflight[io] - self._min_pos[io]
        return self._max_backlog - ahead

    def _recompute_limits(self) -> None:
        for io in self.buffers:
            if self.cancelled or self._error is not None:
                self.limits[io] = 0
            elif self._limiting[io]:
                self.limits[io] = max(0, min(self._max_batch, self._room(io)))
            else:
                self.limits[io] = self._max_batch

    def _note_run_state(self, state: Any, error: Any) -> None:
        """The run is over elsewhere: remember why, so the producer stops at its next value."""
        if state == b"cancelled":
            self._stop_reason = RunCancelled(f"run {self._run_id} was cancelled", run_id=self._run_id)
        elif state == b"failed":
            failure = run_error(error)
            if failure.get("processor") in self._upstream:
                return
            self._stop_reason = failure_error(failure, self._run_id)
        else:
            return
        self.cancelled = True
        self._recompute_limits()

    def stop_reason(self) -> Exception:
        """Why the run stopped elsewhere (its failure, or a cancel)."""
        return self._stopped()

    def _stopped(self) -> Exception:
        return self._stop_reason or RunCancelled(f"run {self._run_id} was cancelled", run_id=self._run_id)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def send_with_next_flush(self, commands: Sequence[list[str]]) -> bool:
        """Queue ``commands`` for the next flush (woken now); False once the writer is closed.

        A failure to send them fails the flush, which the producer then meets.
        """
        if self._closed or self._error is not None:
            return False
        self._riders += commands
        self._kick()
        return True

    def wake_for_riders(self) -> None:
        """Have the flusher send the queued commands when the producer next waits, if any."""
        if self._riders and not self._closed and self._error is None:
            self._kick()

    def take_riders(self) -> list[list[str]]:
        """Hand the commands queued for the next flush to a pipeline about to be sent."""
        riders, self._riders = self._riders, []
        return riders

    # -- flusher side --------------------------------------------------

    def _kick(self, *, now: bool = False) -> None:
        """Have the flusher send what is waiting when the producer next waits.

        With a starter and no flusher task yet: ``now`` starts the task (it
        runs at the loop's next turn); otherwise the starter is asked, and it
        starts the task only if there is still something to send by then.
        """
        wake = self._wake
        if wake is not None:
            wake.set()
        elif now:
            self._start_flusher()
        elif not self._asked:
            self._asked = True
            assert self._starter is not None
            self._starter.ask(self)

    def _start_flusher(self) -> None:
        assert self._starter is not None
        wake = self._wake = anyio.Event()
        wake.set()  # its first turn sends what is waiting
        self._starter.start(self, f"datagraph-flush-{self._processor}")

    def start_flusher_if_due(self) -> None:
        """The starter's look: start the flusher if there is still something to send."""
        self._asked = False
        if self._wake is not None or self._closed or self._error is not None:
            return  # running already, or too late: the closing flush sends it all
        # Commands alone wait while a reader of this processor waits for a local writer:
        # its wait is short, and whatever the processor sends next carries them.
        if (self._riders and not self.holding) or any(self.buffers.values()):
            self._start_flusher()

    async def run_flusher(self) -> None:
        """Flush whenever values are waiting; runs until ``close()``."""
        if self._wake is None:
            self._wake = anyio.Event()
        while not self._closed:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self._closed:
                break
            if not self._riders and not any(self.buffers.values()):
                continue  # a read took what was queued: nothing to send
            try:
                await self.flush()
            except Exception as exc:
                # The producer finds it at its next put (make_room raises it).
                self._error = exc
                self._recompute_limits()
                return

    def stream_keys(self) -> list[str]:
        return list(self._keys.values())

    def stop_flusher(self) -> None:
        """Make ``run_flusher`` return once the flush in flight (if any) is done."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    async def wait_flushed(self) -> None:
        """Wait until no flush is in flight (its failure, if any, is then in :attr:`error`)."""
        while self._flushing:
            await self._flushed_event().wait()

    def _flushed_event(self) -> anyio.Event:
        flushed = self._flushed
        if flushed is None:
            flushed = self._flushed = anyio.Event()
        return flushed

    @property
    def error(self) -> BaseException | None:
        """What made the flusher stop, if anything."""
        return self._error

    def _release(self) -> None:
        self._flushing = False
        flushed, self._flushed = self._flushed, None
        if flushed is not None:
            flushed.set()

    async def flush(
        self,
        *,
        markers: Mapping[str, bytes] | None = None,
        extra: Sequence[list[str]] = (),
        closing: bool = False,
        also: Sequence[list[str]] = (),
    ) -> list[Any]:
        """Send everything buffered (plus optional end markers and commands) in one pipeline.

        Returns the replies to ``extra``; ``also`` are commands whose replies are
        not needed (an error among them fails the flush), merged with the riders.
        """
        while self._flushing:
            await self._flushed_event().wait()
        self._flushing = True
        try:
            return await self._flush(markers or {}, extra, closing, also)
        finally:
            self._release()

    async def _flush(
        self,
        markers: Mapping[str, bytes],
        extra: Sequence[list[str]],
        closing: bool,
        also: Sequence[list[str]] = (),
    ) -> list[Any]:
        rt = self._rt
        run_id = self._run_id
        # The buffers are emptied in place: the processor pump holds on to them.
        pending = {io: buf.copy() for io, buf in self.buffers.items() if buf}
        self._moved.update(pending)
        for io, values in pending.items():
            self.buffers[io].clear()
            self._inflight[io] = len(values)
        self.first_at = math.inf
        self._recompute_limits()
        commands: list[list[Any]] = []
        stats_key = keys.stats(run_id)
        ttl = str(int(rt.settings.max_run_duration))
        seq = self._seq
        xadds: list[int] = []
        #: ``(io, seq, field, payload, command index)`` of each entry, for local readers.
        written: list[tuple[str, int, bytes, bytes, int]] = []
        #: Fields of the run's stats hash this flush sets, in one HSET.
        stats_fields: list[str] = []
        bad_value: BadValueError | None = None
        sent: dict[str, int] = {}
        for io, values in pending.items():
            entries, error = self._encode(io, values)
            bad_value = bad_value or error
            sent[io] = sum(count for _, count in entries)
            # Explicit ids make the write idempotent: a pipeline retried after a lost
            # connection cannot add a batch twice (Valkey refuses a non-increasing id).
            for payload, _ in entries:
                seq[io] += 1
                xadds.append(len(commands))
                written.append((io, seq[io], _BATCH_B, payload, len(commands)))
                commands.append(["XADD", self._keys[io], entry_id(seq[io]), BATCH, payload])
            stats_fields += [f"written:{io}", str(self.written[io] + sent[io])]
        if bad_value is not None:
            # Send what came before the bad value, but not an end: the processor fails here.
            markers, extra = {}, ()
        for io, payload in markers.items():
            seq[io] += 1
            xadds.append(len(commands))
            written.append((io, seq[io], _MARKER_B, payload, len(commands)))
            commands.append(["XADD", self._keys[io], entry_id(seq[io]), MARKER, payload])
        for io in {*pending, *markers}:
            # Every write bounds the key's life (NX keeps a retention already set).
            commands.append(["EXPIRE", self._keys[io], ttl, "NX"])
        if self._trim:
            commands += self._trim_commands()
        # Readers' positions bound what may still be written: after the last write
        # (closing), they no longer matter.
        pos_fields = [] if closing else self._position_fields()
        pos_at = len(commands)
        if pos_fields:
            commands.append(["HMGET", keys.pos(run_id), *pos_fields])
        if self._telemetry:
            stats_fields += self._telemetry_fields(pending, closing=closing)
        for values in pending.values():
            # Encoded: let the values go now rather than after the round trip (the
            # producer is filling the buffer again meanwhile; fewer live objects for
            # the garbage collector to walk).
            values.clear()
        if stats_fields:
            commands.append(["HSET", stats_key, *stats_fields])
        state_at = len(commands)
        commands.append(["HMGET", keys.run(run_id), "state", "error"])
        if self._riders or also:
            commands += merge_hsets([*self._riders, *also])
            self._riders = []
        extra_at = len(commands)
        commands += extra
        extra_end = len(commands)
        # Last, so that a processor's final sample sees its end (``extra`` records it).
        commands += self._sample_commands(closing=closing)
        # The last values and the end of a stream arrive together: a reader blocked
        # on it wakes once and takes both, rather than coming back for the end.
        atomic = bool(markers) and any(io in markers for io in pending)
        # The run's record, if it is still on its way from this process, heads this
        # pipeline (a small one) or is waited for (datagraph.recording).
        record = rt.recording.get(run_id) if rt.recording else None
        head: list[list[Any]] = []
        small = sum(len(entry[3]) for entry in written) <= SMALL_FLUSH_BYTES
        if record is not None:
            # A transaction on a cluster holds one slot only, not the global run index.
            taken = record.take() if small and not (atomic and is_cluster(rt.client)) else None
            if taken is None:
                await record.wait_to_write(run_id)
                record = None
            else:
                head = taken
        if head:
            commands = head + commands
        # One script call rather than a dozen commands (datagraph.store.fold); it runs
        # them all at once, as the transaction would have. Not for large entries: their
        # cost is in the bytes, which the fold would copy once more on each side.
        folded = fold(commands, run_id, cluster=is_cluster(rt.client)) if small else None
        # Once the run is recorded, a batch goes to the readers waiting here as its
        # pipeline goes out (see _hand_over); a stream's end only once it is in.
        early = bool(written) and record is None and self._rt.local.any_waiting()
        try:
            if early:
                self._hand_over(written, None)
            result, attempts = await pipeline(
                rt.client,
                folded[0] if folded else commands,
                retry_for=rt.settings.reconnect_timeout,
                doing=f"writing the outputs of processor {self._processor!r} (run {run_id})",
                atomic=atomic and folded is None,
            )
        except BaseException:
            if record is not None:
                record.give_back()
            raise
        if folded:
            result = folded[1](result)
        if head:
            head_replies, result = result[: len(head)], result[len(head) :]
        state_reply = result[state_at]
        if record is not None:
            if not record.accepts(head_replies, attempts):
                refusal = next((r for r in head_replies if isinstance(r, GlideBaseError)), None)
                raise StoreError(
                    f"Valkey refused the record of run {run_id}, sent with a write of processor "
                    f"{self._processor!r}: {refusal}"
                )
            # start_flow's caller gets the loop before the readers woken below: its
            # reader of the outputs is then waiting when they write.
            record.recorded()
            if isinstance(state_reply, list) and state_reply[0] is None:
                # The store did not have the record's script yet: it went again after this
                # pipeline (store.batch), so this read came first. The run has just started.
                state_reply = [b"running", None]
        state, run_failure = _state_reply(state_reply, run_id)
        self._note_run_state(state, run_failure)
        for index, reply in enumerate(result):
            if not isinstance(reply, GlideBaseError):
                continue
            if index >= extra_end:
                self.history_failed(reply)
                continue
            already = index in xadds and "equal or smaller" in str(reply)
            # A retried pipeline finds its own earlier write; a cancelled run may hold
            # the canceller's end marker.
            if already and (attempts > 1 or self.cancelled):
                continue
            raise StoreError(
                f"Valkey refused a write of processor {self._processor!r} (run {run_id}): {reply}"
            )
        if written:
            self._hand_over(written, result)
        for io in pending:
            self.written[io] += sent[io]
            self._inflight[io] = 0
        if pos_fields:
            self._apply_positions(pos_fields, result[pos_at])
        self._recompute_limits()
        if bad_value is not None:
            # What came before the bad value is written; the processor fails here.
            raise bad_value
        return list(result[extra_at:extra_end])

    def _hand_over(self, written: list[tuple[str, int, bytes, bytes, int]], result: list[Any] | None) -> None:
        """Hand the entries of a pipeline to readers of this runtime waiting for them.

        With ``result`` None the pipeline has just gone out, ahead of any command
        those readers send: only its batches go, and the run's record is no longer
        in it (a reader that took the batch before the record was in would flush
        what it made of it on its own while waiting for the stream's end: one more
        round trip per small run).  A stream's end waits for the reply
        (``result``), so a reader never ends a stream that the store does not end;
        if the store refuses the write, the writer fails, and the failure reaches
        the readers after the values, as any failure does.  The reply hands the
        batches over again, for readers that began waiting meanwhile; a reader
        skips what it has.
        """
        local = self._rt.local
        if not local.any_writer():
            return  # no processor of this runtime writes here as LocalExecutor runs it
        by_io: dict[str, list[tuple[int, bytes, bytes]]] = {}
        refused: set[str] = set()
        for io, seq, field, payload, index in written:
            if io in refused:
                continue
            if result is None:
                if field != _BATCH_B:
                    continue
            elif isinstance(result[index], GlideBaseError):
                refused.add(io)  # not in the store as written: readers read the store
                continue
            by_io.setdefault(io, []).append((seq, field, payload))
        for io, entries in by_io.items():
            key = self._keys[io]
            if result is not None:
                local.wrote(key, entries[-1][0])
            if local.waiting(key):
                local.hand_over(key, entries)

    def status_commands(self) -> list[list[Any]]:
        """Time split (and a history sample) for a pipeline of this processor's readers.

        At most twice a second, like a flush's; the sample, when there is one, is
        the last command, and its reply goes to :meth:`history_failed` if it is an error.
        """
        if not self._telemetry:
            return []
        return self._telemetry_commands({}, closing=False) + self._sample_commands(closing=False)

    def _sample_commands(self, *, closing: bool) -> list[list[Any]]:
        if not self._sample_due:
            return []
        self._sample_due = False
        return [sample_history_command(self._run_id, at_end=closing)]

    def history_failed(self, reply: BaseException) -> None:
        """A history sample was refused: say so once; the run goes on without it."""
        if not self._sample_warned:
            self._sample_warned = True
            log.warning(
                "run %s: processor %r could not record the run's history (%s); "
                "the run goes on without it",
                self._run_id,
                self._processor,
                reply,
            )

    def _telemetry_commands(self, pending: Mapping[str, list[Any]], *, closing: bool) -> list[list[Any]]:
        """Time split and per-output rates, at most twice a second (or at the end)."""
        fields = self._telemetry_fields(pending, closing=closing)
        return [["HSET", keys.stats(self._run_id), *fields]] if fields else []

    def _telemetry_fields(self, pending: Mapping[str, list[Any]], *, closing: bool) -> list[str]:
        """The stats fields of :meth:`_telemetry_commands` (none when nothing is due)."""
        now = time.monotonic()
        if now - self._published_at < 0.5 and not closing:
            return []
        self._published_at = now
        name = self._processor
        clock = self.clock
        fields = [
            f"busy:{name}",
            f"{clock.busy(now):.3f}",
            f"idle:{name}",
            f"{clock.idle:.3f}",
            f"bp:{name}",
            f"{clock.backpressured:.3f}",
        ]
        started, counts = self._window
        elapsed = now - started
        wall = repr(time.time())
        totals = {io: self.written[io] + len(pending.get(io, ())) for io in self.buffers}
        for io, total in totals.items():
            if closing:
                # The stream ends here: nothing more will move on it.
                fields += [f"rate:{io}", "0"]
            elif elapsed >= 0.5:
                fields += [f"rate:{io}", f"{(total - counts[io]) / elapsed:.1f}"]
            if io in pending or io in self._moved:
                fields += [f"last:{io}", wall]
        self._moved = set()
        if elapsed >= 0.5:
            self._window = (now, totals)
        self._sample_due = self._history
        return fields

    def _encode(self, io: str, values: list[Any]) -> tuple[list[tuple[bytes, int]], BadValueError | None]:
        """Encode a batch as one entry, or several if one would exceed ``max_entry_bytes``.

        A value that cannot be sent (not serialisable, or too large on its own)
        stops the batch there: the entries before it are returned with the error.
        """
        limit = self._rt.settings.max_entry_bytes
        problem: Exception | None = None
        try:
            payload = self._rt.codec.encode_batch(values)
        except Exception as exc:
            payload, problem = b"", exc
        else:
            if len(payload) <= limit:
                return [(payload, len(values))], None
        if len(values) == 1:
            return [], self._bad_value(io, values[0], len(payload), problem)
        half = len(values) // 2
        left, error = self._encode(io, values[:half])
        if error is not None:
            return left, error
        right, error = self._encode(io, values[half:])
        return left + right, error

    def _bad_value(self, io: str, value: Any, size: int, problem: Exception | None) -> BadValueError:
        kind = type(value).__name__
        if problem is not None:
            error = BadValueError(
                f"processor {self._processor!r} yielded a value of type {kind} to {io!r} that cannot "
                f"be serialised: {type(problem).__name__}: {problem}",
                run_id=self._run_id,
            )
            error.__cause__ = problem
            return error
        return BadValueError(
            f"processor {self._processor!r} yielded a value of type {kind} to {io!r} that encodes "
            f"to {size} bytes, over max_entry_bytes={self._rt.settings.max_entry_bytes}; "
            "yield smaller values or raise the setting",
            run_id=self._run_id,
        )

    def _position_fields(self) -> list[str]:
        fields: list[str] = []
        for io, readers in self._readers.items():
            for reader in readers:
                fields.append(keys.pos_field(reader, io))
                fields.append(keys.pos_id_field(reader, io))
                fields.append(keys.pos_done_field(reader, io))
        return fields

    def _apply_positions(self, fields: list[str], values: list[Any]) -> None:
        limiting: dict[str, int] = {}
        lowest: dict[str, int] = {}
        lowest_id: dict[str, str | None] = {}
        for i in range(0, len(fields), 3):
            reader, io = fields[i].rsplit("/", 1)
            count = int(values[i]) if values[i] is not None else 0
            entry = values[i + 1].decode() if values[i + 1] is not None else None
            if io not in lowest or count < lowest[io]:
                lowest[io] = count
                lowest_id[io] = entry
            if values[i + 2] is not None:
                continue  # that reader has finished: it holds nobody back
            if reader in self._limiting[io] and (io not in limiting or count < limiting[io]):
                limiting[io] = count
        for io, readers in self._limiting.items():
            if readers and io not in limiting:
                limiting[io] = self.written[io] + self._inflight[io]  # every reader finished
        self._min_pos.update(limiting)
        self._trim_pos.update(lowest)
        self._min_id.update(lowest_id)

    async def _refresh_positions(self) -> None:
        fields = self._position_fields()
        if not fields:
            return
        commands: list[list[Any]] = [
            ["HMGET", keys.pos(self._run_id), *fields],
            ["HMGET", keys.run(self._run_id), "state", "error"],
        ]
        # A writer held back by a slow reader still reports where its time goes.
        status = self.status_commands()
        commands += status
        sampled = bool(status) and is_script(status[-1])
        result, _ = await pipeline(
            self._rt.client,
            commands,
            retry_for=self._rt.settings.reconnect_timeout,
            doing=f"reading reader positions of run {self._run_id}",
        )
        if sampled and isinstance(result[-1], GlideBaseError):
            self.history_failed(result.pop())
        for reply in result:
            if isinstance(reply, GlideBaseError):
                raise StoreError(f"Valkey refused a read of run {self._run_id}'s positions: {reply}")
        state, run_failure = _state_reply(result[1], self._run_id)
        self._apply_positions(fields, result[0])
        self._note_run_state(state, run_failure)
        self._recompute_limits()

    def _trim_commands(self) -> list[list[str]]:
        """XTRIMs dropping entries every in-flow reader has consumed (continuous flows)."""
        commands = []
        step = max(self._max_batch, self._max_backlog // 2)
        for io, readers in self._readers.items():
            entry = self._min_id[io]
            if (
                io in self._trim
                and readers
                and entry is not None
                and self._trim_pos[io] - self._trimmed_pos[io] >= step
            ):
                self._trimmed_pos[io] = self._trim_pos[io]
                commands.append(["XTRIM", self._keys[io], "MINID", entry])
        return commands

    async def close(
        self,
        markers: Mapping[str, bytes],
        extra: Sequence[list[str]] = (),
        also: Sequence[list[str]] = (),
    ) -> list[Any]:
        """Flush what is left with the end markers; stop the flusher (see :meth:`flush`)."""
        self.stop_flusher()
        return await self.flush(markers=markers, extra=extra, closing=True, also=also)


def merge_hsets(commands: list[list[str]]) -> list[list[str]]:
    """``commands`` with the ``HSET``s of one key as one ``HSET`` (at the first one's place).

    For commands whose replies nobody reads: one command fewer per key for the
    store client to encode and the store to parse.  Later fields win, as they
    would have.
    """
    merged: list[list[str]] = []
    first: dict[str, list[str]] = {}
    for command in commands:
        if command[0] == "HSET":
            into = first.get(command[1])
            if into is not None:
                into += command[2:]
                continue
            command = list(command)
            first[command[1]] = command
        merged.append(command)
    return merged
