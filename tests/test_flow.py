from __future__ import annotations

import pytest

from datagraph import Flow, Processor
from datagraph.exceptions import CycleError, DuplicateOutputError, FlowError, UnresolvedFlowError


def test_resolve_computes_topology() -> None:
    a = Processor("a", ["x"], ["y"])
    b = Processor("b", ["y"], ["z"])
    c = Processor("c", ["z", "y"], ["out"], wait=True)
    flow = Flow.from_processors(c, b, a).resolve()
    topo = flow.topology
    assert topo.order == ("a", "b", "c")
    assert topo.producers == {"y": "a", "z": "b", "out": "c"}
    assert topo.readers == {"x": ("a",), "y": ("b", "c"), "z": ("c",)}
    assert topo.floating_inputs == ("x",)
    assert topo.final_outputs == ("out",)
    assert topo.partitions == {"a": 0, "b": 0, "c": 1}


def test_resolve_returns_the_flow() -> None:
    a = Processor("a", ["x"], ["y"])
    flow = Flow.from_processors(a)
    assert flow.resolve() is flow


def test_cycle_names_its_processors() -> None:
    a = Processor("a", ["z"], ["x"])
    b = Processor("b", ["x"], ["y"])
    c = Processor("c", ["y"], ["z"])
    ok = Processor("ok", ["in"], ["out"])
    with pytest.raises(CycleError) as info:
        Flow.from_processors(a, b, c, ok).resolve()
    assert info.value.cycles == [["a", "b", "c"]] or sorted(info.value.cycles[0]) == ["a", "b", "c"]
    assert "a" in str(info.value) and "b" in str(info.value) and "c" in str(info.value)
    assert "ok" not in info.value.cycles[0]


def test_two_separate_cycles_are_both_reported() -> None:
    ps = [
        Processor("a", ["b_out"], ["a_out"]),
        Processor("b", ["a_out"], ["b_out"]),
        Processor("c", ["d_out"], ["c_out"]),
        Processor("d", ["c_out"], ["d_out"]),
    ]
    with pytest.raises(CycleError) as info:
        Flow.from_processors(*ps).resolve()
    assert sorted(sorted(c) for c in info.value.cycles) == [["a", "b"], ["c", "d"]]


def test_io_produced_twice_is_rejected_naming_it() -> None:
    a = Processor("a", [], ["x"])
    b = Processor("b", [], ["x"])
    with pytest.raises(DuplicateOutputError, match=r"'x'.*'a'.*'b'"):
        Flow.from_processors(a, b).resolve()


def test_unresolved_flow_topology_is_an_error() -> None:
    flow = Flow.from_processors(Processor("a", ["x"], ["y"]))
    with pytest.raises(UnresolvedFlowError, match="resolve"):
        flow.topology  # noqa: B018


def test_two_processors_with_one_name_are_rejected() -> None:
    with pytest.raises(FlowError, match="two different processors named 'a'"):
        Flow.from_processors(Processor("a", [], ["x"]), Processor("a", [], ["y"]))


def test_empty_flow_is_rejected() -> None:
    with pytest.raises(FlowError, match="at least one"):
        Flow.from_processors()


def test_visualize_draws_processors_and_edges() -> None:
    a = Processor("a", ["x"], ["y"])
    b = Processor("b", ["y"], ["z"])
    graph = Flow.from_processors(a, b).resolve().visualize()
    source = graph.source
    assert "p0 -> p1 [label=y]" in source
    assert "in0 -> p0 [label=x]" in source
    assert "p1 -> out0 [label=z]" in source
    assert "p0 [label=a" in source
    assert hasattr(graph, "_repr_mimebundle_") or hasattr(graph, "_repr_svg_")


def test_spec_roundtrip() -> None:
    a = Processor("a", {"x", "w"}, ["y"], wait=True, max_backlog=5)
    flow = Flow.from_processors(a)
    again = Flow.from_spec(flow.spec())
    assert again.processors[0] == a
    assert again.processors[0].inputs == ("w", "x")
