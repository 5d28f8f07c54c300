"""Stream readers and writers against the real Valkey, below the processor API."""

from __future__ import annotations

import uuid
import weakref
from typing import Any

import anyio
import pytest

from datagraph import Supervisor, streams
from datagraph.exceptions import TamperedPayloadError
from datagraph.runtime import Runtime
from datagraph.store import keys
from datagraph.streams import END, StreamReader, StreamWriter

pytestmark = pytest.mark.anyio


async def _new_run(runtime: Runtime) -> str:
    """A bare run record, enough for readers and writers to find the run alive."""
    run_id = uuid.uuid4().hex
    await runtime.client.custom_command(["HSET", keys.run(run_id), "state", "running"])
    await runtime.client.custom_command(["EXPIRE", keys.run(run_id), "60"])
    return run_id


async def _written(runtime: Runtime, run_id: str, io: str, values: list[Any]) -> None:
    writer = StreamWriter(runtime, run_id, "(input)", {io: []}, max_backlog=10_000)
    writer.buffers[io].extend(values)
    marker = runtime.codec.encode_marker({"status": "ok", "processor": "(input)"})
    await writer.close({io: marker})


async def _position(runtime: Runtime, run_id: str, reader: str, io: str) -> Any:
    return await runtime.client.custom_command(["HGET", keys.pos(run_id), keys.pos_field(reader, io)])


async def test_a_closed_readers_position_rides_with_its_processors_next_flush(
    supervisor: Supervisor,
) -> None:
    runtime = await supervisor.runtime()
    run_id = await _new_run(runtime)
    await _written(runtime, run_id, "x", [1, 2, 3])
    own = StreamWriter(runtime, run_id, "p", {"y": []}, max_backlog=10_000)

    reader = StreamReader(runtime, run_id, ["x"], reader="p", writer=own)
    assert await reader.__anext__() == ("x", [1, 2, 3])
    await reader.aclose()
    # No round trip of its own: the position waits for the writer's flush...
    assert await _position(runtime, run_id, "p", "x") is None
    await own.flush()
    # ...which carries it.
    assert await _position(runtime, run_id, "p", "x") == b"3"


async def test_a_reader_closed_after_its_writer_publishes_its_position_itself(
    supervisor: Supervisor,
) -> None:
    runtime = await supervisor.runtime()
    run_id = await _new_run(runtime)
    await _written(runtime, run_id, "x", [1, 2])
    own = StreamWriter(runtime, run_id, "p", {"y": []}, max_backlog=10_000)
    await own.close({"y": runtime.codec.encode_marker({"status": "ok", "processor": "p"})})

    reader = StreamReader(runtime, run_id, ["x"], reader="p", writer=own)
    assert [item async for item in reader] == [("x", [1, 2]), ("x", END)]
    assert await _position(runtime, run_id, "p", "x") == b"2"


async def test_put_many_writes_no_further_than_the_backlog_ahead_of_the_slowest_reader(
    supervisor: Supervisor,
) -> None:
    """A batch far larger than max_backlog goes out in slices, as value by value it would."""
    runtime = await supervisor.runtime()
    run_id = await _new_run(runtime)
    writer = StreamWriter(runtime, run_id, "p", {"y": ["idle-reader"]}, max_backlog=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run_flusher)
        with anyio.move_on_after(1.0) as waited:
            await writer.put_many("y", range(100))  # the reader never reads: this must wait
        writer.stop_flusher()
    assert waited.cancel_called, "put_many returned although nobody read"
    entries = await runtime.client.custom_command(["XRANGE", keys.stream(run_id, "y"), "-", "+"])
    values = [v for fields in entries.values() for v in runtime.codec.decode_batch(fields[0][1], "y")]
    assert values == list(range(5)) and writer.written["y"] == 5


class Counted:
    """A value that counts how often it is unpickled."""

    unpickled = 0

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_unpickle_counted, ())


def _unpickle_counted() -> Counted:
    Counted.unpickled += 1
    return Counted()


class Token:
    """A value whose life a weak reference can follow."""


async def test_a_fetch_decodes_its_entries_only_as_they_are_handed_out(supervisor: Supervisor) -> None:
    """One XREAD brings every entry; each is unpickled when read, not all of them at once."""
    runtime = await supervisor.runtime()
    run_id = await _new_run(runtime)
    writer = StreamWriter(runtime, run_id, "(input)", {"x": []}, max_backlog=10_000)
    for _ in range(3):
        writer.buffers["x"].extend(Counted() for _ in range(10))
        await writer.flush()
    await writer.close({"x": runtime.codec.encode_marker({"status": "ok", "processor": "(input)"})})

    Counted.unpickled = 0
    reader = StreamReader(runtime, run_id, ["x"])
    io, first = await reader.__anext__()
    assert (io, len(first), Counted.unpickled) == ("x", 10, 10)
    assert not reader._open, "the one fetch should have brought the stream's end too"
    rest = [values async for _, values in reader]
    assert [len(v) for v in rest[:-1]] == [10, 10] and rest[-1] is END
    assert Counted.unpickled == 30


async def test_a_refused_entry_ends_the_read_after_the_values_before_it(supervisor: Supervisor) -> None:
    runtime = await supervisor.runtime()
    run_id = await _new_run(runtime)
    key = keys.stream(run_id, "x")
    tampered = bytearray(runtime.codec.encode_batch([2]))
    tampered[-2] ^= 1
    marker = runtime.codec.encode_marker({"status": "ok", "processor": "(input)"})
    for entry, field, payload in [
        ("0-1", "b", runtime.codec.encode_batch([1])),
        ("0-2", "b", bytes(tampered)),
        ("0-3", "b", runtime.codec.encode_batch([3])),
        ("0-4", "e", marker),
    ]:
        await runtime.client.custom_command(["XADD", key, entry, field, payload])

    reader = StreamReader(runtime, run_id, ["x"])
    assert await reader.__anext__() == ("x", [1])
    for _ in range(2):  # and it stays refused: nothing after it is handed out
        with anyio.fail_after(5), pytest.raises(TamperedPayloadError, match="bad signature"):
            await reader.__anext__()
    await reader.aclose()


async def test_a_flush_lets_go_of_its_values_before_its_round_trip(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = await supervisor.runtime()
    run_id = await _new_run(runtime)
    writer = StreamWriter(runtime, run_id, "p", {"y": []}, max_backlog=10_000)
    tokens = [Token() for _ in range(3)]
    refs = [weakref.ref(token) for token in tokens]
    writer.buffers["y"].extend(tokens)
    del tokens
    alive_when_sent: list[int] = []
    send = streams.pipeline

    async def observed(*args: Any, **kwargs: Any) -> Any:
        alive_when_sent.append(sum(ref() is not None for ref in refs))
        return await send(*args, **kwargs)

    monkeypatch.setattr(streams, "pipeline", observed)
    await writer.flush()
    assert alive_when_sent == [0]
    entries = await runtime.client.custom_command(["XRANGE", keys.stream(run_id, "y"), "-", "+"])
    (fields,) = entries.values()
    assert [type(v) for v in runtime.codec.decode_batch(fields[0][1], "y")] == [Token] * 3
