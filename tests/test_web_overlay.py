"""The overlay's thresholds and words, the diagrams they are drawn on, and stream previews."""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET

import pytest

from datagraph import Flow, IOVal, Supervisor
from datagraph.preview import latest_values, short_repr
from datagraph.snapshots import INPUT, OUTPUT, EdgeSnapshot, ProcessorState
from datagraph.store import keys
from tests.web_support import web_source
from web import overlay
from web.diagram import DiagramEdge, design_edges, diagram
from web.graph import render_svg

SVG = "{http://www.w3.org/2000/svg}"


def _edge(backlog: int, limit: int | None, throughput: float = 0.0) -> EdgeSnapshot:
    return EdgeSnapshot(
        io="x", source="a", target="b", written=backlog, read=0, backlog=backlog, throughput=throughput,
        last_activity=None, backpressure_limit=limit,
        fill=min(1.0, backlog / limit) if limit else None,
    )


@pytest.mark.parametrize(
    ("backlog", "heat"),
    [(0, "heat-0"), (1, "heat-1"), (599, "heat-1"), (600, "heat-2"), (850, "heat-2"), (851, "heat-4"),
     (1000, "heat-4"), (5000, "heat-4")],
)
def test_edge_colour_follows_queue_fill_like_nifi(backlog: int, heat: str) -> None:
    assert overlay.edge_heat(_edge(backlog, 1000)) == heat


def test_edges_without_a_limit_are_coloured_by_movement() -> None:
    assert overlay.edge_heat(_edge(0, None)) == "heat-0"
    assert overlay.edge_heat(_edge(0, None, throughput=5.0)) == "heat-1"
    assert overlay.edge_heat(_edge(10, None)) == "heat-1"
    assert overlay.edge_heat(_edge(0, 100, throughput=3.0)) == "heat-1"


def _state(state: str, activity: str | None = None, online: bool | None = True) -> ProcessorState:
    shares = {"busy": (0.7, 0.1, 0.2), "idle": (0.1, 0.8, 0.1), "backpressured": (0.1, 0.1, 0.8)}
    busy, idle, bp = shares.get(activity or "", (0.0, 0.0, 0.0))
    return ProcessorState(
        name="p", state=state, worker="w", worker_online=online, started=None, ended=None,
        busy_seconds=0, idle_seconds=0, backpressured_seconds=0, busy=busy, idle=idle, backpressured=bp,
        activity=activity,
    )


def test_nodes_are_coloured_by_state_and_activity_like_flink() -> None:
    assert overlay.node_classes(_state("running", "busy")) == "state-running act-busy"
    assert overlay.node_classes(_state("running", "idle")) == "state-running act-idle"
    assert overlay.node_classes(_state("running", "backpressured")) == "state-blocked act-backpressured"
    assert overlay.node_classes(_state("done")) == "state-done"
    assert overlay.node_classes(_state("failed")) == "state-failed"
    assert overlay.node_classes(_state("dispatched")) == "state-pending"
    assert "worker-offline" in overlay.node_classes(_state("running", "busy", online=False))
    assert overlay.node_status(_state("running", "busy")) == "busy 70%"
    assert overlay.node_status(_state("running", "backpressured")) == "backpressured 80%"
    assert overlay.node_status(_state("running", "busy", online=False)) == "worker offline"
    assert overlay.node_status(_state("pending")) == "pending"


def test_time_to_drain() -> None:
    assert overlay.time_to_drain(0, None, 0.0) == (0.0, "empty")
    assert overlay.time_to_drain(100, None, 0.0) == (None, overlay.NO_VALUE)
    assert overlay.time_to_drain(100, 0.0, 0.0) == (None, "stalled")
    assert overlay.time_to_drain(100, 10.0, 20.0) == (None, "growing")
    assert overlay.time_to_drain(100, 30.0, 10.0) == (5.0, "5.0s")
    assert overlay.time_to_drain(6000, 20.0, 10.0) == (600.0, "10m 0s")


def test_read_rates_are_smoothed_per_edge() -> None:
    rates = overlay.ReadRates()
    edge = _edge(0, 10)
    assert rates.observe([edge], 100.0) == {}
    moved = EdgeSnapshot(**{**edge.to_dict(), "read": 100})
    assert rates.observe([moved], 101.0) == {("x", "b"): 100.0}
    stopped = EdgeSnapshot(**{**edge.to_dict(), "read": 100})
    assert rates.observe([stopped], 102.0) == {("x", "b"): 50.0}


def test_formats() -> None:
    assert [overlay.format_count(n) for n in (0, 999, 1234, 56_789, 1_200_000, 250_000_000)] == [
        "0", "999", "1.2k", "56.8k", "1.2M", "250M",
    ]
    assert [overlay.format_rate(r) for r in (0, 2.345, 1500)] == ["0/s", "2.3/s", "1.5k/s"]
    assert [overlay.format_duration(s) for s in (None, 3.25, 42, 250, 7600, 90000)] == [
        overlay.NO_VALUE, "3.2s", "42s", "4m 10s", "2h 6m", "1d 1h",
    ]


def test_live_diagram_keeps_its_layout_and_escapes_what_it_fills_in() -> None:
    processors = [("read<script>", False), ('say "hi"', True)]
    edges = [
        DiagramEdge("in", INPUT, "read<script>"),
        DiagramEdge("mid", "read<script>", 'say "hi"'),
        DiagramEdge("out", 'say "hi"', OUTPUT),
    ]
    live = diagram(processors, edges, live=True)
    layout = render_svg(live.dot)
    first = live.fill(
        layout, {("mid", 'say "hi"'): ("<b>1/s</b>\n3 queued", "heat-2")}, {"read<script>": ("busy", "x")}
    )
    second = live.fill(layout, {("mid", 'say "hi"'): ("2/s\n0 queued", "heat-4")}, {})
    root = ET.fromstring(first)
    ids = {el.get("id"): el for el in root.iter() if el.get("id")}
    assert {
        "node-read<script>", 'node-say "hi"', "input-in", "output-out", 'edge-mid-say "hi"', "edge-out-out",
    } <= set(ids)
    mid = ids['edge-mid-say "hi"']
    assert mid.get("class") == "edge heat-2"
    assert [t.text for t in mid.iter(f"{SVG}text")] == ["mid", "<b>1/s</b>", "3 queued"]
    assert "<b>" not in first and "<script>" not in first
    # Same geometry whatever the figures: only text and classes change.
    assert [el.attrib for el in root.iter(f"{SVG}path")] == [
        el.attrib for el in ET.fromstring(second).iter(f"{SVG}path")
    ]


def test_design_edges_include_inputs_outputs_and_every_producer() -> None:
    specs = [
        {"name": "a", "inputs": ["x"], "outputs": ["y"]},
        {"name": "b", "inputs": ["y"], "outputs": ["z"]},
        {"name": "c", "inputs": [], "outputs": ["y"]},
    ]
    assert design_edges(specs) == [
        DiagramEdge("x", INPUT, "a"),
        DiagramEdge("y", "a", "b"),
        DiagramEdge("y", "c", "b"),
        DiagramEdge("z", "b", OUTPUT),
    ]
    dot = diagram([("a", False), ("b", False), ("c", False)], design_edges(specs), live=False).dot
    svg = render_svg(dot)
    assert 'id="edge-y-b"' in svg and 'id="edge-y-b-2"' in svg


def test_short_repr() -> None:
    assert "..." in short_repr("x" * 500) and len(short_repr("x" * 500)) <= 80
    assert len(short_repr(list(range(1000)))) < 80

    class Broken:
        def __repr__(self) -> str:
            raise ValueError("no")

    assert "Broken" in short_repr(Broken())  # never raises


@pytest.mark.anyio
async def test_previews_verify_signatures(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_source, name="web preview").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_count", value=5)])
    run_id = outputs["web_numbers"].run_id
    await supervisor.wait(run_id, timeout=20)
    client = (await supervisor.runtime()).client
    previews = await latest_values(client, supervisor.codec, run_id, ["web_count", "web_numbers", "nothing"])
    assert previews["web_count"].values == ("5",)
    assert previews["web_numbers"].values == ("2", "3", "4")
    assert previews["nothing"].values == () and previews["nothing"].note

    # A forged entry (a pickle that would run code) is reported, never decoded.
    forged = b"\x00" * 16 + pickle.dumps([1])
    await client.custom_command(["XADD", keys.stream(run_id, "web_numbers"), "*", "b", forged])
    previews = await latest_values(client, supervisor.codec, run_id, ["web_numbers"])
    assert previews["web_numbers"].values == ()
    assert "signature does not verify" in (previews["web_numbers"].note or "")
