"""The designer's graph: typed edges, the inspector, suggestions, stages, history headers, palette groups."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from datagraph import IO, IOVal, Processor, Supervisor
from datagraph.demo import etl_flow
from datagraph.snapshots import INPUT, OUTPUT
from tests.web_support import open_dashboard, text_of
from web.diagram import DiagramEdge, design_edges, diagram
from web.graph import render_svg
from web.layout import partitions

pytestmark = pytest.mark.anyio

HX = {"HX-Request": "true"}
SVG = "{http://www.w3.org/2000/svg}"

d_seeder = Processor("d_seeder", inputs=[], outputs=["d_seed"])
d_emit = Processor("d_emit", inputs=["d_seed"], outputs=["d_text"])
d_emit2 = Processor("d_emit2", inputs=["d_other_seed"], outputs=["d_text"])
d_parse = Processor("d_parse", inputs=["d_text"], outputs=["d_value"])
d_strict = Processor("d_strict", inputs=["d_text"], outputs=["d_strict_out"], max_backlog=7)
d_sum = Processor("d_sum", inputs=["d_value"], outputs=["d_total"], wait=True)


@d_seeder
async def _d_seeder() -> AsyncIterator[IOVal[int]]:
    yield IOVal(name="d_seed", value=3)


@d_emit
async def _d_emit(d_seed: IO[int]) -> AsyncIterator[IOVal[str]]:
    """Writes numbers as text."""
    for i in range(await d_seed.first()):
        yield IOVal(name="d_text", value=str(i))


@d_emit2
async def _d_emit2(d_other_seed: IO[int]) -> AsyncIterator[IOVal[str]]:
    yield IOVal(name="d_text", value=str(await d_other_seed.first()))


@d_parse
async def _d_parse(d_text: IO[str]) -> AsyncIterator[IOVal[int]]:
    async for text in d_text.stream():
        yield IOVal(name="d_value", value=int(text))


@d_strict
async def _d_strict(d_text: IO[int]) -> AsyncIterator[IOVal[int]]:
    async for value in d_text.stream():
        yield IOVal(name="d_strict_out", value=value + 1)


@d_sum
async def _d_sum(d_value: IO[float]) -> AsyncIterator[IOVal[float]]:
    yield IOVal(name="d_total", value=sum(await d_value.collect()))


def _messages(html: str, level: str) -> list[str]:
    marker = f'data-testid="designer-{level}">'
    return [text_of(part.split("</li>", 1)[0]).strip() for part in html.split(marker)[1:]]


def _svg(html: str) -> ET.Element:
    start = html.index("<svg")
    return ET.fromstring(html[start : html.index("</svg>", start) + len("</svg>")])


def _by_id(root: ET.Element) -> dict[str, ET.Element]:
    return {el.get("id", ""): el for el in root.iter() if el.get("id")}


def _texts(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter(f"{SVG}text")]


async def test_a_mismatched_edge_is_flagged_but_does_not_block(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        html = (
            await client.get("/designer/workspace", params={"processor": ["d_emit", "d_strict"]}, headers=HX)
        ).text
        warnings = [w for w in _messages(html, "warning") if "type mismatch" in w]
        assert len(warnings) == 1, warnings
        warning = warnings[0]
        for part in ("'d_text'", "'d_emit' produces str", "'d_strict' reads it as int", "change one of"):
            assert part in warning, warning
        assert 'data-testid="designer-valid"' in html  # Python is dynamic: it still launches
        assert 'id="designer-launch" data-testid="designer-launch"\n         href="/launch?' in html
        edges = _by_id(_svg(html))
        assert edges["edge-d_text-d_strict"].get("class") == "edge mismatch"
        assert _texts(edges["edge-d_text-d_strict"]) == ["d_text", "str ≠ int"]

        fine = (
            await client.get(
                "/designer/workspace", params={"processor": ["d_emit", "d_parse", "d_sum"]}, headers=HX
            )
        ).text
        assert not [w for w in _messages(fine, "warning") if "type mismatch" in w]
        edges = _by_id(_svg(fine))
        # Each edge says what flows along it: the producer's type (a run input: the reader's).
        assert _texts(edges["edge-d_text-d_parse"]) == ["d_text", "str"]
        assert _texts(edges["edge-d_seed-d_emit"]) == ["d_seed", "int"]
        assert _texts(edges["edge-d_value-d_sum"]) == ["d_value", "int"]  # int into float is fine
        assert edges["edge-d_value-d_sum"].get("class") == "edge heat-0"


async def test_wait_processors_are_drawn_as_a_later_stage(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        html = (
            await client.get(
                "/designer/workspace", params={"processor": ["d_emit", "d_parse", "d_sum"]}, headers=HX
            )
        ).text
        ids = _by_id(_svg(html))
        assert "stage-1" in ids and "stage-2" in ids and "stage-3" not in ids
        assert _texts(ids["stage-2"]) == ["stage 2"]
        assert 'xlink:title="stage 2: its waiting processors start once every stream they read' in html
        # Graphviz draws a cluster's outline; its nodes follow it, in the order stated.
        assert ids["stage-2"].get("class") == "cluster stage"
        one = (await client.get("/designer/workspace", params={"processor": ["d_emit"]}, headers=HX)).text
        assert 'class="cluster' not in one  # one stage: nothing to separate


def test_partitions_follow_wait_processors_and_what_reads_them() -> None:
    processors = [("a", False), ("b", True), ("c", False), ("d", True), ("e", False)]
    edges = [
        DiagramEdge("x", INPUT, "a"),
        DiagramEdge("y", "a", "b"),
        DiagramEdge("z", "b", "c"),
        DiagramEdge("w", "c", "d"),
        DiagramEdge("v", INPUT, "e"),
        DiagramEdge("out", "d", OUTPUT),
    ]
    assert partitions(processors, edges) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 0}
    # A waiting processor fed only by run inputs starts with the first stage.
    assert partitions([("a", True)], [DiagramEdge("x", INPUT, "a")]) == {"a": 0}
    assert (
        partitions([("a", False), ("b", True)], [DiagramEdge("p", "a", "b"), DiagramEdge("q", "b", "a")])
        == {}
    )
    # The same numbers as the engine's own, on the demo's flow.
    flow = etl_flow()
    specs = [p.spec() for p in flow.processors]
    demo = partitions([(p["name"], p["wait"]) for p in specs], design_edges(specs))
    assert demo == flow.topology.partitions and demo["daily_report"] == 1
    live = diagram(processors, edges, live=True)
    svg = render_svg(live.dot)
    ids = _by_id(ET.fromstring(svg))
    assert {"stage-1", "stage-2", "stage-3"} <= set(ids)
    # The run view's live placeholders survive the clusters.
    assert live.nodes == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    assert "%%CN1%%" in svg


def test_long_flows_are_laid_out_top_to_bottom() -> None:
    chain = [(f"step_number_{i}", False) for i in range(8)]
    edges = [DiagramEdge(f"io_{i}", chain[i][0], chain[i + 1][0]) for i in range(7)]
    assert "rankdir=TB" in diagram(chain, edges, live=True).dot
    assert "rankdir=LR" in diagram(chain[:2], edges[:1], live=False).dot
    svg = render_svg(diagram(chain, edges, live=True).dot)
    width_pt = float(re.search(r'<svg width="([\d.]+)pt"', svg)[1])  # type: ignore[index]
    assert width_pt < 700  # fits a 1,000-pixel window at its natural size


async def test_suggestions_name_the_producers_and_readers(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        html = (await client.get("/designer/workspace", params={"processor": ["d_emit"]}, headers=HX)).text
        suggestions = {
            m["io"]: text_of(m["body"])
            for m in re.finditer(
                r'<li data-io="(?P<io>[^"]+)" data-kind="\w+" data-testid="designer-suggestion">'
                r"(?P<body>.*?)</li>",
                html,
                re.DOTALL,
            )
        }
        assert "add d_seeder to produce 'd_seed'" in suggestions["d_seed"]
        assert 'data-testid="designer-suggest-add" data-processor="d_seeder" data-io="d_seed"' in html
        # Its output d_text is final: who would read it.
        assert "2 registered processors read 'd_text'" in suggestions["d_text"]
        assert "Add d_parse" in suggestions["d_text"] and "Add d_strict" in suggestions["d_text"]

        two = (await client.get("/designer/workspace", params={"processor": ["d_parse"]}, headers=HX)).text
        assert "2 registered processors produce 'd_text'" in text_of(two)
        assert 'data-processor="d_emit" data-io="d_text"' in two
        assert 'data-processor="d_emit2" data-io="d_text"' in two
        # Adding one of them is one click: the button asks for it.
        assert """hx-vals='{"add": "d_emit"}'""" in two


async def test_inspector_shows_a_processor_and_an_io(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        html = (
            await client.get(
                "/designer/workspace",
                params={"processor": ["d_emit", "d_strict"], "select": "d_strict"},
                headers=HX,
            )
        ).text
        inspector = html.split('data-testid="designer-inspector"', 1)[1].split("</aside>", 1)[0]
        text = text_of(inspector)
        assert "d_strict" in text and "in d_text int" in text and "out d_strict_out int" in text
        assert "max_backlog 7" in text and "wait no: streams" in text
        assert "online" in text and __name__ in text
        assert 'data-testid="inspector-remove" data-processor="d_strict"' in inspector
        # The port whose type does not fit is marked.
        assert '<tr data-port="d_text" class="mismatch"' in inspector
        assert 'class="node state-pending selected"' in html
        assert response_header_url(
            await client.get(
                "/designer/workspace", params={"processor": ["d_emit"], "select": "d_emit"}, headers=HX
            ),
            "HX-Replace-Url",
        ) == {"processor": ["d_emit"], "select": ["d_emit"]}

        io_html = (
            await client.get(
                "/designer/workspace", params={"processor": ["d_emit"], "io": "d_seed"}, headers=HX
            )
        ).text
        assert _by_id(_svg(io_html))["input-d_seed"].get("class") == "node io-node selected"
        inspector = io_html.split('data-testid="designer-inspector"', 1)[1].split("</aside>", 1)[0]
        producers = inspector.split('data-testid="inspector-producers"', 1)[1].split("</ul>", 1)[0]
        assert 'data-testid="inspector-add" data-processor="d_seeder"' in producers
        readers = inspector.split('data-testid="inspector-readers"', 1)[1].split("</ul>", 1)[0]
        assert "d_emit" in readers and "in this flow" in readers


def response_header_url(response: object, header: str) -> dict[str, list[str]]:
    url = response.headers[header]  # type: ignore[attr-defined]
    parts = urlsplit(url)
    assert parts.path == "/designer"
    return parse_qs(parts.query)


async def test_changes_are_pushed_and_selection_replaced(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        added = await client.get(
            "/designer/workspace",
            params={"processor": ["d_emit"], "add": "d_parse", "io": "d_text"},
            headers=HX,
        )
        assert "HX-Replace-Url" not in added.headers
        assert response_header_url(added, "HX-Push-Url") == {
            "processor": ["d_emit", "d_parse"],
            "io": ["d_text"],
        }
        removed = await client.get(
            "/designer/workspace",
            params={"processor": ["d_emit", "d_parse"], "remove": "d_parse", "select": "d_parse"},
            headers=HX,
        )
        # The removed processor is no longer selected.
        assert response_header_url(removed, "HX-Push-Url") == {"processor": ["d_emit"]}
        assert 'data-testid="inspector-hint"' in removed.text


async def test_the_page_works_from_its_address_alone(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        response = await client.get(
            "/designer", params={"processor": ["d_emit", "d_parse"], "select": "d_emit"}
        )
        assert response.status_code == 200
        html = response.text
        assert 'data-testid="inspector-title"><span class="mono">d_emit</span>' in html
        assert "Writes numbers as text." in html
        # Nodes are links to the same design with that node selected.
        assert 'href="/designer?processor=d_emit&amp;processor=d_parse&amp;select=d_parse"' in html
        assert 'href="/designer?processor=d_emit&amp;processor=d_parse&amp;io=d_seed"' in html
        assert '<script src="/static/designer.js" defer></script>' in html
        script = await client.get("/static/designer.js")
        assert script.status_code == 200 and "htmx.ajax" in script.text


async def test_palette_groups_by_module_and_filters(supervisor: Supervisor) -> None:
    async with open_dashboard(supervisor) as (_, client):
        html = (await client.get("/designer/palette", params={"q": "d_ "}, headers=HX)).text
        groups = re.findall(r'data-module="([^"]+)" data-testid="designer-palette-group"', html)
        assert __name__ in groups
        mine = html.split(f'data-module="{__name__}"', 1)[1].split("</section>", 1)[0]
        names = re.findall(r'<li data-processor="([^"]+)">', mine)
        assert names == sorted(names) and {"d_emit", "d_parse", "d_sum"} <= set(names)
        only = (await client.get("/designer/palette", params={"q": "d_strict"}, headers=HX)).text
        assert re.findall(r'<li data-processor="([^"]+)">', only) == ["d_strict"]
        assert re.search(r"1 of \d+ match", text_of(only))


async def test_a_registry_of_500_groups_and_filters_in_good_time(valkey_url: str, anyio_backend: str) -> None:
    """A guard against gross regressions only: ``python -m benchmarks --only designer`` measures."""
    import json
    import time

    from datagraph.store import keys
    from datagraph.telemetry import Telemetry

    url = valkey_url.rsplit("/", 1)[0] + "/7"  # a database of its own: other tests see none of these
    now = time.time()
    fields: list[str] = []
    implementers: list[str] = []
    for i in range(500):
        name = f"big_{i:03d}"
        port = {"type": "int", "schema": {"type": "integer"}}
        record = {
            "name": name,
            "inputs": [{"name": f"big_io_{i}", **port}],
            "outputs": [{"name": f"big_io_{i + 1}", **port}],
            "wait": False,
            "module": f"big.module_{i % 25:02d}",
            "doc": f"step {i}",
            "updated": now,
        }
        fields += [name, json.dumps(record)]
        implementers += [keys.implementer_field(name, "big-worker"), repr(now)]
    async with await Telemetry.connect(url) as telemetry:
        await telemetry.client.custom_command(["HSET", keys.PROCESSORS, *fields])
        await telemetry.client.custom_command(["HSET", keys.IMPLEMENTERS, *implementers])
        try:
            async with open_dashboard(redis_url=url) as (_, client):
                page = (await client.get("/designer")).text
                assert len(re.findall(r'data-testid="designer-palette-group"', page)) == 25
                started = time.perf_counter()
                html = (
                    await client.get("/designer/palette", params={"q": "module_07 step"}, headers=HX)
                ).text
                elapsed = time.perf_counter() - started
                assert re.findall(r'data-module="([^"]+)" data-testid', html) == ["big.module_07"]
                assert len(re.findall(r'<li data-processor="', html)) == 20
                assert elapsed < 2.0, f"filtering 500 processors took {elapsed:.2f}s"
        finally:
            await telemetry.client.custom_command(["DEL", keys.PROCESSORS, keys.IMPLEMENTERS])
