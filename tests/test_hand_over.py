"""A run's inputs handed straight to the processors that read them in the process that started it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.executors import LocalExecutor
from datagraph.plan import Plan
from datagraph.store import keys

pytestmark = pytest.mark.anyio

DEADLINE = 10.0

_count = Processor("hand_count", ["hand_n"], ["hand_nums"])
_double = Processor("hand_double", ["hand_nums"], ["hand_out"])
# Reads a run input twice (first(), then all of it) and zips another with an in-flow stream.
_mix = Processor("hand_mix", ["hand_xs", "hand_k", "hand_nums2"], ["hand_mixed"])
_count2 = Processor("hand_count2", ["hand_k"], ["hand_nums2"])
# Two readers of one dict input: one changes what it was given.
_spoil = Processor("hand_spoil", ["hand_doc"], ["hand_spoiled"])
_keep = Processor("hand_keep", ["hand_doc"], ["hand_kept"])


@_count
async def _count_up(hand_n: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await hand_n.first()):
        yield IOVal("hand_nums", i + 1)


@_double
async def _twice(hand_nums: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for x in hand_nums:
        yield IOVal("hand_out", x * 2)


@_count2
async def _count_k(hand_k: IO[int]) -> AsyncIterator[IOVal[int]]:
    for i in range(await hand_k.first()):
        yield IOVal("hand_nums2", i)


@_mix
async def _mixed(hand_xs: IO[int], hand_k: IO[int], hand_nums2: IO[int]) -> AsyncIterator[IOVal[Any]]:
    k = await hand_k.first()
    total = sum(await hand_xs.collect())
    async for x, n in hand_xs.stream_with(hand_nums2):
        yield IOVal("hand_mixed", (x * k + n, total))


@_spoil
async def _spoiling(hand_doc: IO[dict[str, Any]]) -> AsyncIterator[IOVal[Any]]:
    doc = await hand_doc.first()
    doc["items"].append("spoiled")
    yield IOVal("hand_spoiled", doc)


@_keep
async def _keeping(hand_doc: IO[dict[str, Any]]) -> AsyncIterator[IOVal[Any]]:
    yield IOVal("hand_kept", await hand_doc.first())


TWO_STAGES = Flow.from_processors(_count, _double).resolve()
MIXED = Flow.from_processors(_count2, _mix).resolve()


async def _calls(supervisor: Supervisor, command: str) -> int:
    runtime = await supervisor.runtime()
    info = await runtime.client.custom_command(["INFO", "commandstats"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def _hash(supervisor: Supervisor, key: str) -> dict[str, str]:
    runtime = await supervisor.runtime()
    raw: Any = await runtime.client.custom_command(["HGETALL", key])
    return {k.decode(): v.decode() for k, v in raw.items()}


async def _run_mixed(supervisor: Supervisor) -> tuple[list[Any], dict[str, str], dict[str, str], int]:
    """The mixed flow's output, its positions, its read/written counters and the XREADs it cost."""
    xs = list(range(2500))  # three entries of max_batch values
    before = await _calls(supervisor, "xread")
    out = await supervisor.start_flow(MIXED, [*(IOVal("hand_xs", x) for x in xs), IOVal("hand_k", 3)])
    got = await out["hand_mixed"].collect()
    run_id = out["hand_mixed"].run_id
    assert await supervisor.wait(run_id, timeout=DEADLINE) == "succeeded"
    xreads = await _calls(supervisor, "xread") - before
    stats = await _hash(supervisor, keys.stats(run_id))
    counters = {k: v for k, v in stats.items() if k.startswith(("read:", "written:"))}
    positions = await _hash(supervisor, keys.pos(run_id))
    positions.pop("ended", None)  # when the run's readers were done: a time, not a position
    return got, positions, counters, xreads


def _attach(valkey_url: str, **settings: Any) -> Supervisor:
    return Supervisor.attach(
        redis_config={"url": valkey_url},
        executor=LocalExecutor(),
        secret=b"test-secret",
        heartbeat_interval=600.0,
        # These count the reads of the store that input hand-over saves; in-flow streams
        # handed over in-process as well (datagraph.local_streams) would hide them.
        hand_over_local=False,
        **settings,
    )


async def test_inputs_in_hand_cost_no_read(supervisor: Supervisor, valkey_url: str) -> None:
    """Handed over: the source's input costs no XREAD; with the hand-over off, it costs one."""
    await Supervisor.adetach()
    counts = {}
    for limit in (1024 * 1024, 0):
        supervisor = _attach(valkey_url, hand_over_inputs_max_bytes=limit)
        warm = await supervisor.start_flow(TWO_STAGES, [IOVal("hand_n", 1)])
        assert await warm["hand_out"].collect() == [2]
        before = await _calls(supervisor, "xread")
        out = await supervisor.start_flow(TWO_STAGES, [IOVal("hand_n", 3)])
        assert await out["hand_out"].collect() == [2, 4, 6]
        assert await supervisor.wait(out["hand_out"].run_id, timeout=DEADLINE) == "succeeded"
        counts[limit] = await _calls(supervisor, "xread") - before
        await Supervisor.adetach()
    # The double's input and the caller's output; the source's input only from the store.
    assert counts == {1024 * 1024: 2, 0: 3}


async def test_handed_inputs_count_and_publish_as_if_read(supervisor: Supervisor, valkey_url: str) -> None:
    """Values, order, read positions and counters are the same whether the inputs are handed or read."""
    await Supervisor.adetach()
    results = {}
    for limit in (1024 * 1024, 0):
        supervisor = _attach(valkey_url, hand_over_inputs_max_bytes=limit)
        results[limit] = await _run_mixed(supervisor)
        await Supervisor.adetach()
    handed, read = results[1024 * 1024], results[0]
    xs = list(range(2500))
    assert handed[0] == read[0] == [(x * 3 + x, sum(xs)) for x in range(3)]
    assert handed[1] == read[1]  # every position, entry id and "read to the end" mark
    assert handed[1][keys.pos_field("hand_mix", "hand_k")] == "1"
    assert handed[1][keys.pos_done_field("hand_mix", "hand_xs")] == "1"
    assert handed[2] == read[2]
    assert handed[2]["written:hand_xs"] == "2500"
    # The in-flow stream and the caller's output are still read from the store; the
    # inputs (four reads of them) only with the hand-over off.
    assert handed[3] < read[3]


async def test_inputs_over_the_limit_are_read_from_the_store(valkey_url: str, anyio_backend: str) -> None:
    Supervisor.detach()
    supervisor = _attach(valkey_url, hand_over_inputs_max_bytes=64)
    try:
        got, pos, counters, xreads = await _run_mixed(supervisor)
        assert got == [(x * 4, sum(range(2500))) for x in range(3)]
        assert counters["written:hand_xs"] == "2500"
        assert pos[keys.pos_done_field("hand_mix", "hand_xs")] == "1"
        assert xreads >= 5  # hand_k twice, hand_xs twice, the in-flow stream, the output
    finally:
        await Supervisor.adetach()


async def test_each_reader_gets_values_of_its_own(supervisor: Supervisor) -> None:
    """Handed values are decoded per reader, as read from the store: no reader sees another's change."""
    flow = Flow.from_processors(_spoil, _keep).resolve()
    doc = {"items": ["a"]}
    out = await supervisor.start_flow(flow, [IOVal("hand_doc", doc)])
    assert await out["hand_spoiled"].first() == {"items": ["a", "spoiled"]}
    assert await out["hand_kept"].first() == {"items": ["a"]}
    assert doc == {"items": ["a"]}  # nor the caller's own object


async def test_the_inputs_in_hand_stay_in_this_process(supervisor: Supervisor) -> None:
    """The plan stored for other processes (Celery, ProcessExecutor) carries no inputs."""
    plan = Plan.build("r-hand", TWO_STAGES, outputs=["hand_out"], default_backlog=10, trim=True)
    plan.given["hand_n"] = [("0-1", "b", b"payload"), ("0-2", "e", b"end")]
    assert "payload" not in plan.to_json() and "given" not in plan.to_json()
    assert Plan.from_json(plan.to_json()).given == {}
    assert Plan.from_json(plan.to_json()) == plan
