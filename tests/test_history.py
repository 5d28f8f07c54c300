"""Run history: samples recorded by the engine, the read API and the bottleneck rule."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import pytest

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.history import RunHistory, Samples, build_history
from datagraph.snapshots import INPUT, OUTPUT
from datagraph.store import keys
from datagraph.store.scripts import sample_history_command
from datagraph.telemetry import Telemetry
from tests.history_support import COUNT, LIMIT, SLOW_FLOW, inputs, run_slow_flow

# -- the bottleneck rule, on samples made up here -------------------------------------

Proc = tuple[str, list[str], list[str], bool]


def make_plan(procs: Sequence[Proc], *, limit: int = 100, outputs: Sequence[str] = ()) -> dict[str, Any]:
    produced = {io: name for name, _, outs, _ in procs for io in outs}
    readers: dict[str, list[str]] = {}
    for name, ins, _, _ in procs:
        for io in ins:
            readers.setdefault(io, []).append(name)
    floating = [io for _, ins, _, _ in procs for io in ins if io not in produced]
    return {
        "flow": {
            "name": "f",
            "processors": [
                {"name": n, "inputs": i, "outputs": o, "wait": w, "max_backlog": None} for n, i, o, w in procs
            ],
        },
        "producers": produced,
        "readers": readers,
        "floating_inputs": floating,
        "outputs": list(outputs),
        "max_backlog": {name: limit for name, *_ in procs},
    }


class Script:
    """Builds cumulative samples second by second, as the store would record them."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.at = start
        self.totals: dict[str, float] = {}
        self.samples: list[tuple[float, dict[str, str]]] = []

    def second(
        self,
        shares: Mapping[str, tuple[float, float, float]],
        backlog: Mapping[tuple[str, str], int] = {},
        states: Mapping[str, str] = {},
        written: Mapping[str, int] = {},
    ) -> None:
        """One second: (busy, idle, backpressured) per processor, backlog per (io, reader)."""
        self.at += 1.0
        fields: dict[str, str] = {}
        for name, (busy, idle, bp) in shares.items():
            for kind, share in (("busy", busy), ("idle", idle), ("bp", bp)):
                key = f"{kind}:{name}"
                self.totals[key] = self.totals.get(key, 0.0) + share
                fields[key] = f"{self.totals[key]:.3f}"
            fields[f"state:{name}"] = states.get(name, "running")
        for name, state in states.items():
            fields[f"state:{name}"] = state
        for (io, reader), lag in backlog.items():
            total = written.get(io, 10_000)
            fields[f"written:{io}"] = str(total)
            fields[f"r:{reader}/{io}"] = str(total - lag)
        self.samples.append((self.at, fields))

    def history(self, plan: Mapping[str, Any], state: str = "running") -> RunHistory:
        return build_history("r", plan, state, Samples.from_mappings(self.samples))


BUSY = (0.95, 0.0, 0.05)
HELD = (0.2, 0.0, 0.8)
IDLE = (0.05, 0.95, 0.0)
EASY = (0.3, 0.7, 0.0)


def test_chain_names_the_slow_stage_and_why() -> None:
    plan = make_plan([("a", ["n"], ["x"], False), ("b", ["x"], ["y"], False), ("c", ["y"], ["z"], False)])
    script = Script()
    for _ in range(3):
        script.second({"a": EASY, "b": EASY, "c": EASY}, {("x", "b"): 5, ("y", "c"): 5})
    for _ in range(10):
        script.second({"a": HELD, "b": HELD, "c": BUSY}, {("x", "b"): 95, ("y", "c"): 98})
    history = script.history(plan)
    bottleneck = history.bottleneck
    assert bottleneck is not None
    assert bottleneck.processor == "c"
    assert bottleneck.input == "y"
    assert bottleneck.until is None
    # Named once the 5-second window turns: within a few samples of the change.
    assert script.samples[3][0] <= bottleneck.since <= script.samples[6][0]
    assert "its input `y` is full (98 % of 100)" in bottleneck.reason
    assert "upstream is backpressured (b)" in bottleneck.reason
    assert "c is the bottleneck since" in bottleneck.describe()


def test_downstream_idle_is_said() -> None:
    plan = make_plan([("a", ["n"], ["x"], False), ("b", ["x"], ["y"], False), ("c", ["y"], ["z"], False)])
    script = Script()
    for _ in range(8):
        script.second({"a": HELD, "b": BUSY, "c": IDLE}, {("x", "b"): 100, ("y", "c"): 0})
    bottleneck = script.history(plan).bottleneck
    assert bottleneck is not None and bottleneck.processor == "b"
    assert bottleneck.reason.endswith("downstream idle")


def test_fan_in_names_the_join_by_its_fullest_input() -> None:
    plan = make_plan([
        ("l", ["n"], ["left"], False),
        ("r", ["n"], ["right"], False),
        ("join", ["left", "right"], ["out"], False),
    ])
    script = Script()
    for _ in range(8):
        script.second(
            {"l": HELD, "r": HELD, "join": BUSY}, {("left", "join"): 90, ("right", "join"): 100}
        )
    bottleneck = script.history(plan).bottleneck
    assert bottleneck is not None
    assert (bottleneck.processor, bottleneck.input) == ("join", "right")


def test_fan_out_names_only_the_slow_reader() -> None:
    plan = make_plan([
        ("src", ["n"], ["x"], False),
        ("fast", ["x"], ["f"], False),
        ("slow", ["x"], ["s"], False),
    ])
    script = Script()
    for _ in range(8):
        script.second(
            {"src": HELD, "fast": IDLE, "slow": BUSY}, {("x", "fast"): 2, ("x", "slow"): 100}
        )
    bottleneck = script.history(plan).bottleneck
    assert bottleneck is not None and bottleneck.processor == "slow"


def test_a_waiting_processor_is_no_bottleneck_and_its_input_is_not_full() -> None:
    plan = make_plan([("src", ["n"], ["x"], False), ("agg", ["x"], ["total"], True)])
    script = Script()
    for _ in range(6):
        # agg waits for the whole of x: a large backlog, but its writer never waits for it.
        script.second({"src": BUSY}, {("x", "agg"): 5000}, states={"agg": "pending"})
    for _ in range(6):
        script.second({"src": (0, 1, 0), "agg": BUSY}, {("x", "agg"): 4000}, states={"src": "done"})
    history = script.history(plan)
    assert history.bottleneck is None
    edge = history.edge("x", "agg")
    assert edge.backpressure_limit is None and edge.fill == ()


def test_a_flow_that_keeps_up_has_no_bottleneck() -> None:
    plan = make_plan([("a", ["n"], ["x"], False), ("b", ["x"], ["y"], False)])
    script = Script()
    for _ in range(10):
        # b is busy, but its input never fills: it keeps up.
        script.second({"a": EASY, "b": BUSY}, {("x", "b"): 20})
    assert script.history(plan).bottleneck is None


def test_a_backpressured_processor_is_not_the_bottleneck() -> None:
    plan = make_plan([("a", ["n"], ["x"], False), ("b", ["x"], ["y"], False), ("c", ["y"], ["z"], False)])
    script = Script()
    for _ in range(8):
        # b's input is full, but b waits on c: c is to blame, and c's input is not full.
        script.second({"a": HELD, "b": (0.5, 0.0, 0.5), "c": IDLE}, {("x", "b"): 100, ("y", "c"): 50})
    assert script.history(plan).bottleneck is None


def test_a_past_bottleneck_has_an_end() -> None:
    plan = make_plan([("a", ["n"], ["x"], False), ("b", ["x"], ["y"], False)])
    script = Script()
    for _ in range(8):
        script.second({"a": HELD, "b": BUSY}, {("x", "b"): 100})
    for _ in range(10):
        script.second({"a": EASY, "b": EASY}, {("x", "b"): 3})
    bottleneck = script.history(plan).bottleneck
    assert bottleneck is not None and bottleneck.processor == "b"
    assert bottleneck.until is not None
    assert bottleneck.since < bottleneck.until <= script.samples[12][0]
    assert "was the bottleneck from" in bottleneck.describe()


def test_a_short_gap_does_not_end_a_bottleneck() -> None:
    plan = make_plan([("a", ["n"], ["x"], False), ("b", ["x"], ["y"], False)])
    script = Script()
    for _ in range(8):
        script.second({"a": HELD, "b": BUSY}, {("x", "b"): 100})
    first = script.history(plan).bottleneck
    script.second({"a": HELD, "b": BUSY}, {("x", "b"): 10})  # one sample drained
    for _ in range(4):
        script.second({"a": HELD, "b": BUSY}, {("x", "b"): 100})
    bottleneck = script.history(plan).bottleneck
    assert first is not None and bottleneck is not None
    assert bottleneck.since == first.since and bottleneck.until is None


def test_series_rates_and_shares() -> None:
    plan = make_plan([("a", ["n"], ["x"], False), ("b", ["x"], [], False)], limit=1000)
    script = Script()
    script.second({"a": EASY, "b": EASY}, {("x", "b"): 0}, written={"x": 100})
    script.second({"a": EASY, "b": EASY}, {("x", "b"): 100}, written={"x": 400})
    history = script.history(plan)
    edge = history.edge("x", "b")
    assert edge.written == (100, 400)
    assert edge.read == (100, 300)
    assert edge.backlog == (0, 100)
    assert edge.throughput == (0.0, 300.0)
    assert edge.read_rate == (0.0, 200.0)
    assert edge.fill == (0.0, 0.1)
    a = history.processor("a")
    assert a.busy[1] == pytest.approx(0.3) and a.idle[1] == pytest.approx(0.7)
    assert a.backpressured[1] == 0.0
    # since: later samples only, rates still from the sample before.
    samples = Samples.from_mappings(script.samples)
    later = build_history("r", plan, "running", samples, since=script.samples[1][0])
    assert later.t == (script.samples[1][0],)
    assert later.edge("x", "b").throughput == (300.0,)
    assert json.loads(later.to_json())["edges"][0]["t"] == [script.samples[1][0]]


def test_series_match_sample_by_sample_arithmetic() -> None:
    """The whole-list build gives what plain per-sample arithmetic gives, on samples that
    take every odd path: names that appear late (blank before), a counter that goes back,
    two samples at one time, a queue past its limit, a processor that reports no time."""
    plan = make_plan(
        [("a", ["n"], ["x"], False), ("b", ["x"], ["y"], False), ("c", ["y"], [], True)], limit=50
    )
    raw: list[tuple[float, dict[str, str]]] = [
        (10.0, {"written:x": "10", "busy:a": "0.5", "idle:a": "0.5", "bp:a": "0", "state:a": "running"}),
        (11.0, {"written:x": "70", "r:b/x": "5", "busy:a": "1.2", "idle:a": "0.8", "bp:a": "0.0",
                "busy:b": "0.9", "idle:b": "0.1", "bp:b": "0", "state:a": "running", "state:b": "running"}),
        (11.0, {"written:x": "75", "r:b/x": "6", "busy:a": "1.2", "idle:a": "0.8", "bp:a": "0.0",
                "busy:b": "0.9", "idle:b": "0.1", "bp:b": "0", "state:a": "running", "state:b": "running"}),
        (12.5, {"written:x": "72", "r:b/x": "40", "written:y": "30", "busy:a": "1.0", "idle:a": "0.8",
                "bp:a": "0.7", "busy:b": "1.9", "idle:b": "0.1", "bp:b": "0.5", "state:a": "done",
                "state:b": "running", "state:c": "pending"}),
        (14.0, {"written:x": "72", "r:b/x": "72", "written:y": "90", "busy:a": "1.0", "idle:a": "0.8",
                "bp:a": "0.7", "busy:b": "2.4", "idle:b": "0.4", "bp:b": "0.5", "state:a": "done",
                "state:b": "done", "state:c": "running", "busy:c": "0.1", "idle:c": "0", "bp:c": "0"}),
    ]
    history = build_history("r", plan, "running", Samples.from_mappings(raw))
    t = [at for at, _ in raw]

    def number(i: int, name: str) -> float:
        return float(raw[i][1].get(name) or 0)

    def per_second(i: int, name: str) -> float:
        if i == 0:
            return 0.0
        moved, elapsed = number(i, name) - number(i - 1, name), t[i] - t[i - 1]
        return moved / elapsed if moved > 0 and elapsed > 0 else 0.0

    assert history.t == tuple(t)
    for edge in history.edges:
        written = f"written:{edge.io}"
        read = f"r:{edge.target}/{edge.io}"
        backlogs = [max(0, int(number(i, written)) - int(number(i, read))) for i in range(len(t))]
        assert edge.written == tuple(int(number(i, written)) for i in range(len(t)))
        assert edge.read == tuple(int(number(i, read)) for i in range(len(t)))
        assert edge.backlog == tuple(backlogs)
        assert edge.throughput == tuple(per_second(i, written) for i in range(len(t)))
        assert edge.read_rate == tuple(per_second(i, read) for i in range(len(t)))
        limit = edge.backpressure_limit
        assert edge.fill == (tuple(min(1.0, b / limit) for b in backlogs) if limit else ())
    assert history.edge("x", "b").fill[3] == 0.64 and history.edge("x", "b").throughput[2] == 0.0
    for processor in history.processors:
        shares = []
        for i in range(len(t)):
            spent = [
                max(0.0, number(i, f"{kind}:{processor.name}") - (number(i - 1, f"{kind}:{processor.name}")
                                                                   if i else 0.0))
                for kind in ("busy", "idle", "bp")
            ]
            total = sum(spent)
            shares.append(tuple(part / total if total > 0 else 0.0 for part in spent))
        assert processor.busy == tuple(s[0] for s in shares)
        assert processor.idle == tuple(s[1] for s in shares)
        assert processor.backpressured == tuple(s[2] for s in shares)
        states = [values.get(f"state:{processor.name}") or "pending" for _, values in raw]
        assert processor.state == tuple(states)
    # The JSON form is the dataclasses' own, without their deep copy.
    assert history.to_dict() == dataclasses.asdict(history)


# -- recorded by the engine, read back through Telemetry ---------------------------------

@pytest.mark.anyio
@pytest.mark.stores  # on a standalone Valkey and on a cluster
async def test_engine_records_a_slow_stage_filling_then_draining(supervisor: Supervisor) -> None:
    started = time.time()
    run_id = await run_slow_flow(supervisor)
    telemetry = await Telemetry.from_supervisor(supervisor)
    history = await telemetry.history(run_id)
    assert history is not None and history.state == "succeeded"

    # Samples about a second apart across the whole run, timed by the store's clock.
    assert len(history.t) >= 3
    assert started - 1 <= history.t[0] and history.t[-1] <= time.time() + 1
    gaps = [b - a for a, b in zip(history.t, history.t[1:], strict=False)]
    assert max(gaps) <= 1.6, gaps

    edge = history.edge("hist_nums", "hist_slow")
    assert (edge.source, edge.backpressure_limit) == ("hist_source", LIMIT)
    assert max(edge.backlog) >= LIMIT * 0.8, edge.backlog  # it filled up...
    assert edge.backlog[-1] == 0  # ...and drained
    assert edge.written[-1] == edge.read[-1] == COUNT
    assert list(edge.written) == sorted(edge.written)
    assert [e.io for e in history.edges] == ["hist_n", "hist_slow_for", "hist_nums", "hist_out"]
    assert history.edge("hist_n", "hist_source").source == INPUT
    assert history.edge("hist_out", OUTPUT).written[-1] == COUNT

    slow = history.processor("hist_slow")
    assert slow.state[-1] == "done"
    assert max(slow.busy) >= 0.7
    source = history.processor("hist_source")
    # (less than all the rest: hist_slow blocks the event loop they share)
    assert max(source.backpressured) >= 0.3

    bottleneck = history.bottleneck
    # (what the rule saw, should a loaded machine ever leave it unnamed)
    assert bottleneck is not None, (
        f"no bottleneck: backlog of hist_nums {list(edge.backlog)} (limit {LIMIT}), hist_slow busy "
        f"{list(slow.busy)}, backpressured {list(slow.backpressured)}, states {list(slow.state)}"
    )
    assert bottleneck.processor == "hist_slow"
    assert bottleneck.until is not None  # the run is over
    assert "its input `hist_nums` is full" in bottleneck.reason

    # JSON as the API gives it.
    data = history.to_dict()
    edge_fields = {"io", "source", "target", "t", "written", "read", "backlog", "throughput"}
    assert set(data["edges"][0]) >= edge_fields
    assert set(data["processors"][0]) >= {"name", "t", "busy", "backpressured", "idle"}
    assert data["bottleneck"]["processor"] == "hist_slow"

    # History expires with the run's other keys.
    runtime = await supervisor.runtime()
    stats_ttl = await runtime.client.custom_command(["TTL", keys.stats(run_id)])
    for key in (keys.history(run_id), keys.history_coarse(run_id)):
        ttl = await runtime.client.custom_command(["TTL", key])
        assert 0 < ttl <= stats_ttl + 1, (key, ttl, stats_ttl)

    # since: only later samples.
    later = await telemetry.history(run_id, since=history.t[-2])
    assert later is not None and later.t == history.t[-2:]


@pytest.mark.anyio
@pytest.mark.parametrize("setting", ["telemetry", "history"])
async def test_history_off_records_nothing(valkey_url: str, anyio_backend: str, setting: str) -> None:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"test-secret", **{setting: False}
    )
    try:
        out = await supervisor.start_flow(SLOW_FLOW, inputs(300, 50))
        assert len(await out["hist_out"].collect()) == 300
        run_id = out["hist_out"].run_id
        runtime = await supervisor.runtime()
        assert await runtime.client.custom_command(["EXISTS", keys.history(run_id)]) == 0
        assert await runtime.client.custom_command(["EXISTS", keys.history_coarse(run_id)]) == 0
    finally:
        await Supervisor.adetach()


@pytest.mark.anyio
async def test_unknown_run_has_no_history(supervisor: Supervisor) -> None:
    telemetry = await Telemetry.from_supervisor(supervisor)
    assert await telemetry.history("no-such-run") is None


@pytest.mark.anyio
async def test_a_sink_reports_its_time_while_it_runs(supervisor: Supervisor) -> None:
    """A processor with no outputs never flushes: its reads carry its time split."""
    sink = Processor("hist_sink", ["hist_items"], [])
    seen: list[int] = []

    @sink
    async def _sink(hist_items: IO[int]) -> AsyncIterator[IOVal[Any]]:
        async for value in hist_items:
            seen.append(value)
            time.sleep(0.002)  # noqa: ASYNC251 (busy, not idle)
        return
        yield  # an async generator that yields nothing

    feeder = Processor("hist_feeder", ["hist_count"], ["hist_items"], max_backlog=50)

    @feeder
    async def _feeder(hist_count: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await hist_count.first()):
            yield IOVal("hist_items", i)

    flow = Flow.from_processors(feeder, sink).resolve()
    out = await supervisor.start_flow(flow, [IOVal("hist_count", 1200)], all_outputs=True)
    run_id = out["hist_items"].run_id
    telemetry = await Telemetry.from_supervisor(supervisor)
    with anyio.fail_after(10):
        while True:
            history = await telemetry.history(run_id)
            assert history is not None
            series = history.processor("hist_sink")
            busy = [b for b, s in zip(series.busy, series.state, strict=True) if s == "running"]
            if any(b > 0.5 for b in busy):
                break
            assert history.state == "running", "the sink's time split was only published at its end"
            await anyio.sleep(0.2)
    assert await supervisor.wait(run_id, timeout=10) == "succeeded"


@pytest.mark.anyio
async def test_status_history_prints_a_text_heatmap(supervisor: Supervisor, valkey_url: str) -> None:
    import sys

    run_id = await run_slow_flow(supervisor)
    command = [sys.executable, "-m", "datagraph", "status", "--redis-url", valkey_url, "--run", run_id]
    result = await anyio.run_process([*command, "--history"], check=False)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert all(len(line) <= 100 for line in lines[1:-1]), [len(line) for line in lines]
    row = next(line for line in lines if line.lstrip().startswith("hist_nums (hist_source -> hist_slow)"))
    assert "\u2588" in row  # full at some point
    assert lines[-1].startswith("BOTTLENECK hist_slow was the bottleneck from")
    assert any(line.lstrip().startswith("hist_slow ") for line in lines)

    as_json = await anyio.run_process([*command, "--history", "--json"], check=False)
    assert json.loads(as_json.stdout)["bottleneck"]["processor"] == "hist_slow"

    missing = await anyio.run_process(
        [sys.executable, "-m", "datagraph", "status", "--redis-url", valkey_url, "--history"], check=False
    )
    assert missing.returncode == 2 and b"--history needs --run ID" in missing.stderr


@pytest.mark.anyio
async def test_a_sample_holds_the_counters_in_the_order_of_the_names_list(supervisor: Supervisor) -> None:
    """The stored format: one comma-separated entry per sample, its values in the order of
    the run's names list, which grows at its end; only a forced or due sample, or one at the end."""
    client = (await supervisor.runtime()).client
    run_id = "sample-format"
    stats, pos = keys.stats(run_id), keys.pos(run_id)
    all_keys = [stats, pos, keys.run(run_id), keys.history(run_id), keys.history_coarse(run_id)]
    all_keys.append(keys.history_names(run_id))
    await client.custom_command(["DEL", *all_keys])
    try:
        await client.custom_command([
            "HSET", stats, "created", "1.0", "written:a", "5", "worker:p", "w1", "state:p", "running",
            "busy:p", "0.250", "rate:a", "3.0",
        ])  # fmt: skip
        await client.custom_command(["EXPIRE", stats, "60"])
        await client.custom_command(["HSET", pos, "p/a", "4", "p/a#id", "0-3", "p/a#done", "1", "ended", "2"])
        await client.custom_command(["HSET", keys.run(run_id), "state", "running"])

        async def sample(**mode: bool) -> Any:
            return await client.custom_command(sample_history_command(run_id, **mode))

        async def stored() -> tuple[list[str], str]:
            names = await client.custom_command(["LRANGE", keys.history_names(run_id), "0", "-1"])
            newest = ["XREVRANGE", keys.history(run_id), "+", "-", "COUNT", "1"]
            last: Any = await client.custom_command(newest)
            fields = dict(next(iter(last.values())))  # {entry id: [[field, value]]}
            return [n.decode() for n in names], fields[b"v"].decode()

        assert await sample(force=True) == 1
        assert await stored() == (["written:a", "state:p", "busy:p", "r:p/a"], "5,running,0.250,4")
        # A new counter goes at the end of the names; the others keep their place.
        await client.custom_command(["HSET", stats, "idle:p", "0.5", "written:a", "6"])
        assert await sample(force=True) == 1
        names, values = await stored()
        assert names == ["written:a", "state:p", "busy:p", "r:p/a", "idle:p"]
        assert values == "6,running,0.250,4,0.5"
        assert await client.custom_command(["XLEN", keys.history(run_id)]) == 2
        assert await client.custom_command(["XLEN", keys.history_coarse(run_id)]) == 1  # once a minute
        for key in all_keys[3:]:
            assert 0 < await client.custom_command(["TTL", key]) <= 60

        # Sampled "later" than now: neither a due sample nor a closing one while the run goes on...
        clock: Any = await client.custom_command(["TIME"])
        later = int(clock[0]) * 1000 + 3_600_000
        await client.custom_command(["HSET", stats, "sampled", str(later)])
        assert await sample() == 0
        assert await sample(at_end=True) == 0
        # ...but a closing one once the run is over.
        await client.custom_command(["HSET", keys.run(run_id), "state", "succeeded"])
        assert await sample() == 0
        assert await sample(at_end=True) == 1
        assert await client.custom_command(["XLEN", keys.history(run_id)]) == 3
    finally:
        await client.custom_command(["DEL", *all_keys])
