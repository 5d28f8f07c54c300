"""Property tests: random flows resolve and run exactly; cycles are named; values round-trip.

Every flow here runs for real (LocalExecutor, the session's Valkey) and its
outputs are compared with a result computed independently in plain Python.
Each example of an async test runs on a fresh event loop (anyio's pytest
plugin does that for ``@given`` tests) with a supervisor of its own.
"""

from __future__ import annotations

import inspect
import itertools
import math
import struct
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from datagraph import IO, Flow, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.exceptions import CycleError, TamperedPayloadError
from datagraph.store.codec import Codec

pytestmark = pytest.mark.anyio

# valkey-glide replaces its old module paths with proxies that warn on first
# attribute access, and Hypothesis reads every loaded module's ``__file__`` when
# it collects tests; with warnings as errors that breaks collection. Let each
# proxy give its one warning here, silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    for _module in list(sys.modules.values()):
        getattr(_module, "__file__", None)

#: Flow-running properties: modest counts, no per-example deadline (each starts a run).
RUNS = settings(
    max_examples=25,
    deadline=None,
    # The anyio_backend (and valkey_url) fixtures hold one value for every example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
#: A run that hangs costs its whole time limit on every attempt, so shrinking a
#: hang would outlast the per-test timeout: report the first failing flow as drawn
#: (the minimal cases found this way are the regression tests further down).
RUNS_NO_SHRINK = settings(RUNS, phases=[Phase.explicit, Phase.reuse, Phase.generate])


@asynccontextmanager
async def attached(url: str, **options: Any) -> AsyncIterator[Supervisor]:
    """A supervisor for one example, closed on the example's own event loop."""
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": url}, executor=LocalExecutor(), secret=b"prop-secret", **options
    )
    try:
        yield supervisor
    finally:
        await Supervisor.adetach()


# -- random DAGs ---------------------------------------------------------------

MODES = ("zip", "pad", "merge")


@dataclass(frozen=True)
class Node:
    """One processor of a random flow: what it reads, how it combines, what it writes."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    mode: str
    wait: bool
    salt: int
    max_backlog: int | None


@dataclass(frozen=True)
class Dag:
    nodes: tuple[Node, ...]  # in declaration order (shuffled: resolve() must sort them)
    inputs: dict[str, list[int]]  # floating inputs the flow reads, with their values
    all_outputs: bool


@st.composite
def dags(draw: st.DrawFn) -> Dag:
    floating = [f"in{i}" for i in range(draw(st.integers(1, 3)))]
    available = list(floating)
    nodes = []
    for i in range(draw(st.integers(1, 6))):
        inputs = draw(st.lists(st.sampled_from(available), min_size=1, max_size=3, unique=True))
        outputs = tuple(f"p{i}o{k}" for k in range(draw(st.integers(1, 2))))
        nodes.append(
            Node(
                name=f"prop-p{i}",
                inputs=tuple(inputs),
                outputs=outputs,
                mode=draw(st.sampled_from(MODES)),
                wait=draw(st.booleans()),
                salt=1000 * (i + 1),
                # Tiny backlogs make writers wait for their readers (also for wait=True ones).
                max_backlog=draw(st.sampled_from([None, None, 1, 2])),
            )
        )
        available.extend(outputs)
    read = {io for node in nodes for io in node.inputs}
    values = st.lists(st.integers(-50, 50), min_size=1, max_size=8)
    inputs = {io: draw(values) for io in floating if io in read}
    shuffled = tuple(draw(st.permutations(nodes)))
    return Dag(shuffled, inputs, draw(st.booleans()))


def combine(mode: str, streams: list[list[int]], salt: int) -> list[int]:
    """What a processor of ``mode`` computes from its input streams (the reference model)."""
    if mode == "zip":
        return [sum(t) + salt for t in zip(*streams, strict=False)]
    if mode == "pad":
        return [sum(t) + salt for t in itertools.zip_longest(*streams, fillvalue=0)]
    return [v + salt for v in sorted(v for s in streams for v in s)]


def expected_streams(dag: Dag) -> dict[str, list[int]]:
    streams: dict[str, list[int]] = {io: list(vs) for io, vs in dag.inputs.items()}
    pending = list(dag.nodes)
    while pending:
        node = next(n for n in pending if all(io in streams for io in n.inputs))
        pending.remove(node)
        values = combine(node.mode, [streams[io] for io in node.inputs], node.salt)
        for k, io in enumerate(node.outputs):
            streams[io] = values[k :: len(node.outputs)]
    return streams


def implement(node: Node) -> Processor:
    """The processor for ``node``, with a function whose parameters are its inputs."""
    spec = Processor(node.name, node.inputs, node.outputs, wait=node.wait, max_backlog=node.max_backlog)
    width = len(node.outputs)

    async def combined(ios: dict[str, IO[int]]) -> AsyncIterator[int]:
        first, *rest = (ios[name] for name in node.inputs)
        if node.mode == "zip":
            async for t in first.stream_with(*rest):
                yield sum(t) + node.salt
        elif node.mode == "pad":
            async for t in first.stream_with(*rest, pad=0):
                yield sum(t) + node.salt
        else:
            merged = [item.value async for item in first.as_available(*rest)]
            for v in sorted(merged):
                yield v + node.salt

    async def run(**ios: IO[int]) -> AsyncIterator[IOVal[int]]:
        index = 0
        async for value in combined(ios):
            yield IOVal(node.outputs[index % width], value)
            index += 1

    # Named parameters, one per input, as a hand-written processor would have them.
    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(io, inspect.Parameter.KEYWORD_ONLY) for io in node.inputs]
    )
    spec(run)
    return spec


@RUNS_NO_SHRINK
@given(dag=dags())
async def test_random_dag_runs_with_exact_outputs(dag: Dag, valkey_url: str) -> None:
    flow = Flow.from_processors(*(implement(node) for node in dag.nodes)).resolve()
    expected = expected_streams(dag)
    topo = flow.topology
    producers = {io: n.name for n in dag.nodes for io in n.outputs}
    readers = {io for n in dag.nodes for io in n.inputs}
    assert set(topo.floating_inputs) == set(dag.inputs)
    assert set(topo.final_outputs) == {io for io in producers if io not in readers}
    position = {name: i for i, name in enumerate(topo.order)}
    for node in dag.nodes:
        for io in node.inputs:
            if io in producers:
                assert position[producers[io]] < position[node.name]

    async with attached(valkey_url) as supervisor:
        given_inputs = [IOVal(io, v) for io, values in dag.inputs.items() for v in values]
        with anyio.fail_after(5):
            outputs = await supervisor.start_flow(flow, given_inputs, all_outputs=dag.all_outputs)
            wanted = set(producers) if dag.all_outputs else set(topo.final_outputs)
            assert set(outputs) == wanted
            got = {io: await handle.collect() for io, handle in outputs.items()}
            assert got == {io: expected[io] for io in wanted}
            assert await supervisor.wait(next(iter(outputs.values())).run_id, timeout=10) == "succeeded"


# -- regressions found by the random flows --------------------------------------


async def run_to_end(supervisor: Supervisor, flow: Flow, inputs: list[IOVal[Any]]) -> dict[str, list[Any]]:
    """Start ``flow``, collect its outputs and wait for the run to succeed (5 s in all)."""
    with anyio.fail_after(5):
        outputs = await supervisor.start_flow(flow, inputs)
        got = {io: await handle.collect() for io, handle in outputs.items()}
        assert await supervisor.wait(next(iter(outputs.values())).run_id) == "succeeded"
    return got


async def test_reader_that_stops_early_does_not_block_its_producer(supervisor: Supervisor) -> None:
    """``first()`` reads one value; the producer still has more than its backlog to write."""
    src = Processor("early-src", ["n"], ["xs"], max_backlog=2)
    head = Processor("early-head", ["xs"], ["head"])

    @src
    async def _src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("xs", i)

    @head
    async def _head(xs: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("head", await xs.first())

    flow = Flow.from_processors(src, head).resolve()
    assert await run_to_end(supervisor, flow, [IOVal("n", 10)]) == {"head": [0]}


async def test_zip_that_ends_with_its_shorter_input_lets_the_run_finish(supervisor: Supervisor) -> None:
    """The minimal flow hypothesis found: a zip stops when ``in0`` ends, one value of ``a`` unread."""
    copy = Processor("zipend-copy", ["in0"], ["a"], max_backlog=1)
    pair = Processor("zipend-pair", ["in0", "a"], ["b"])

    @copy
    async def _copy(in0: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for x in in0:
            yield IOVal("a", x)

    @pair
    async def _pair(in0: IO[int], a: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for x, y in in0.stream_with(a):
            yield IOVal("b", x + y)

    flow = Flow.from_processors(copy, pair).resolve()
    assert await run_to_end(supervisor, flow, [IOVal("in0", 1), IOVal("in0", 2)]) == {"b": [2, 4]}


async def test_wait_reader_of_a_stream_longer_than_the_backlog_completes(supervisor: Supervisor) -> None:
    """A ``wait=True`` reader reads nothing until the stream ends; its producer must not wait for it."""
    src = Processor("waitbp-src", ["n"], ["xs"], max_backlog=2)
    total = Processor("waitbp-total", ["xs"], ["total"], wait=True)

    @src
    async def _src(n: IO[int]) -> AsyncIterator[IOVal[int]]:
        for i in range(await n.first()):
            yield IOVal("xs", i)

    @total
    async def _total(xs: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("total", sum(await xs.collect()))

    flow = Flow.from_processors(src, total).resolve()
    assert await run_to_end(supervisor, flow, [IOVal("n", 10)]) == {"total": [45]}


async def test_processor_taking_only_var_keyword_gets_its_inputs(supervisor: Supervisor) -> None:
    """``def f(**ios)`` is accepted for any inputs, so it must also receive them.

    Found while building the random flows: resolution hands fast-depends a
    signature without the inputs, which drops them, and the function is
    called with no arguments at all.
    """
    pair = Processor("varkw-pair", ["a", "b"], ["sum"])

    @pair
    async def _pair(**ios: IO[int]) -> AsyncIterator[IOVal[int]]:
        async for x, y in ios["a"].stream_with(ios["b"]):
            yield IOVal("sum", x + y)

    flow = Flow.from_processors(pair).resolve()
    got = await run_to_end(supervisor, flow, [IOVal("a", 1), IOVal("a", 2), IOVal("b", 10), IOVal("b", 20)])
    assert got == {"sum": [11, 22]}


# -- graphs with cycles ---------------------------------------------------------


@st.composite
def digraphs(draw: st.DrawFn) -> dict[int, set[int]]:
    """Random directed graphs on up to 7 nodes: node -> the nodes it reads from."""
    n = draw(st.integers(1, 7))
    edges = draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=14))
    upstream: dict[int, set[int]] = {i: set() for i in range(n)}
    for src, dst in edges:
        if src != dst:  # a processor cannot read its own output (Processor refuses it)
            upstream[dst].add(src)
    return upstream


def has_cycle(upstream: dict[int, set[int]]) -> bool:
    """Kahn's algorithm: a graph is acyclic iff every node can be removed source-first."""
    remaining = {node: set(ups) for node, ups in upstream.items()}
    while True:
        ready = [node for node, ups in remaining.items() if not ups]
        if not ready:
            return bool(remaining)
        for node in ready:
            del remaining[node]
        for ups in remaining.values():
            ups.difference_update(ready)


def processors_for(upstream: dict[int, set[int]]) -> list[Processor]:
    """Node i writes ``x<i>`` and reads ``x<j>`` for each edge j -> i (plus a floating input)."""
    return [
        Processor(f"cyc{i}", [*(f"x{j}" for j in sorted(ups)), "seed"], [f"x{i}"])
        for i, ups in upstream.items()
    ]


@settings(max_examples=200, deadline=None)
@given(upstream=digraphs())
def test_resolve_rejects_exactly_the_cyclic_graphs(upstream: dict[int, set[int]]) -> None:
    flow = Flow.from_processors(*processors_for(upstream))
    if not has_cycle(upstream):
        order = flow.resolve().topology.order
        position = {name: i for i, name in enumerate(order)}
        for dst, ups in upstream.items():
            for src in ups:
                assert position[f"cyc{src}"] < position[f"cyc{dst}"]
        return
    with pytest.raises(CycleError) as info:
        flow.resolve()
    assert info.value.cycles


@st.composite
def cyclic_digraphs(draw: st.DrawFn) -> dict[int, set[int]]:
    """Random graphs with at least one cycle: a random cycle plus random other edges."""
    upstream = draw(digraphs())
    nodes = sorted(upstream)
    assume(len(nodes) >= 2)
    members = draw(st.lists(st.sampled_from(nodes), min_size=2, max_size=len(nodes), unique=True))
    for src, dst in itertools.pairwise([*members, members[0]]):
        upstream[dst].add(src)
    return upstream


@settings(max_examples=300, deadline=None)
@given(upstream=cyclic_digraphs())
def test_cycle_error_names_real_cycles(upstream: dict[int, set[int]]) -> None:
    """Every cycle the error names is a closed walk along real edges, in data order."""
    with pytest.raises(CycleError) as info:
        Flow.from_processors(*processors_for(upstream)).resolve()
    error = info.value
    assert error.cycles
    for cycle in error.cycles:
        nodes = [int(name.removeprefix("cyc")) for name in cycle]
        assert len(set(nodes)) == len(nodes), cycle
        for src, dst in itertools.pairwise([*nodes, nodes[0]]):
            assert src in upstream[dst], f"{cycle}: cyc{dst} does not read the output of cyc{src}"
        assert " -> ".join([*cycle, cycle[0]]) in str(error)


def cycle_error(upstream: dict[int, set[int]]) -> CycleError:
    with pytest.raises(CycleError) as info:
        Flow.from_processors(*processors_for(upstream)).resolve()
    return info.value


def test_cycle_is_named_in_data_direction() -> None:
    # cyc0 feeds cyc1, cyc1 feeds cyc2, cyc2 feeds cyc0.
    error = cycle_error({0: {2}, 1: {0}, 2: {1}})
    assert error.cycles == [["cyc0", "cyc1", "cyc2"]]
    assert "cyc0 -> cyc1 -> cyc2 -> cyc0" in str(error)


def test_cycle_named_in_a_larger_component_is_real() -> None:
    # Two loops through cyc0 (cyc0 <-> cyc1 and cyc0 <-> cyc2): one component, and
    # cyc1 -> cyc2 is not an edge, so "cyc0 -> cyc1 -> cyc2 -> cyc0" is not a cycle.
    error = cycle_error({0: {1, 2}, 1: {0}, 2: {0}})
    for cycle in error.cycles:
        nodes = [int(name.removeprefix("cyc")) for name in cycle]
        upstream = {0: {1, 2}, 1: {0}, 2: {0}}
        assert all(src in upstream[dst] for src, dst in itertools.pairwise([*nodes, nodes[0]])), cycle


# -- values round-trip -------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
batches = st.lists(values, max_size=30)


def identical(a: Any, b: Any) -> bool:
    """Equal, same types all the way down, floats bit for bit (nan == nan, -0.0 != 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    return bool(a == b)


def test_identical_tells_nan_and_signed_zero_apart() -> None:
    assert identical([math.nan, {"a": (1, b"x")}], [math.nan, {"a": (1, b"x")}])
    assert not identical([0.0], [-0.0])
    assert not identical([1], [True])
    assert not identical((1,), [1])


@settings(max_examples=200, deadline=None)
@given(batch=batches, secret=st.binary(min_size=1, max_size=100))
def test_codec_round_trips_batches(batch: list[Any], secret: bytes) -> None:
    codec = Codec(secret)
    payload = codec.encode_batch(batch)
    assert identical(codec.decode_batch(payload, "a test stream"), batch)


@settings(max_examples=100, deadline=None)
@given(batch=batches, data=st.data())
def test_codec_refuses_any_changed_byte(batch: list[Any], data: st.DataObject) -> None:
    codec = Codec(b"codec-secret")
    payload = bytearray(codec.encode_batch(batch))
    index = data.draw(st.integers(0, len(payload) - 1))
    payload[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(TamperedPayloadError):
        codec.decode_batch(bytes(payload), "a test stream")
    with pytest.raises(TamperedPayloadError):
        Codec(b"another-secret").decode_batch(codec.encode_batch(batch), "a test stream")


echo = Processor("prop-echo", ["vals"], ["out"])


@echo
async def _echo(vals: IO[Any]) -> AsyncIterator[IOVal[Any]]:
    async for v in vals:
        yield IOVal("out", v)


ECHO = Flow.from_processors(echo).resolve()


@RUNS
@given(
    batch=batches.filter(bool),
    max_batch=st.sampled_from([1, 3, 1000]),
    max_entry_bytes=st.sampled_from([4096, 16 * 1024 * 1024]),
)
async def test_values_round_trip_through_a_stream(
    batch: list[Any], max_batch: int, max_entry_bytes: int, valkey_url: str
) -> None:
    """Input stream (written by start_flow) -> processor -> output stream (natural batching)."""
    async with attached(valkey_url, max_batch=max_batch, max_entry_bytes=max_entry_bytes) as supervisor:
        with anyio.fail_after(10):
            out = await supervisor.start_flow(ECHO, [IOVal("vals", v) for v in batch])
            got = await out["out"].collect()
    assert identical(got, batch)


# -- helpers the properties rely on ----------------------------------------------


def test_reference_model_examples() -> None:
    assert combine("zip", [[1, 2, 3], [10, 20]], 0) == [11, 22]
    assert combine("pad", [[1, 2, 3], [10]], 5) == [16, 7, 8]
    assert combine("merge", [[3, 1], [2]], 0) == [1, 2, 3]
    assert has_cycle({0: {1}, 1: {0}}) and has_cycle({0: {0}})
    assert not has_cycle({0: set(), 1: {0}, 2: {0, 1}})
