from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from web import graph
from web.graph import GraphRenderError, render_svg, render_svg_async

SMALL = """
digraph flow {
  rankdir=LR;
  source [id="node-source" class="state-running" label="load-users"];
  sink [id="node-sink" label="write report"];
  source -> sink [id="edge-users" class="heat-2" label="users"];
}
"""

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    graph.clear_cache()
    yield
    graph.clear_cache()


def _by_id(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {element.get("id", ""): element for element in root.iter() if element.get("id")}


def test_renders_an_svg_element_ready_to_inline() -> None:
    svg = render_svg(SMALL)

    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    for unwanted in ("<?xml", "<!DOCTYPE", "<!--"):
        assert unwanted not in svg
    assert ET.fromstring(svg).tag == f"{SVG}svg"


def test_node_and_edge_labels_are_drawn() -> None:
    texts = {element.text for element in ET.fromstring(render_svg(SMALL)).iter(f"{SVG}text")}

    assert {"load-users", "write report", "users"} <= texts


def test_ids_and_classes_from_dot_survive() -> None:
    svg = render_svg(SMALL)
    elements = _by_id(svg)

    assert elements["node-source"].get("class") == "node state-running"
    assert elements["node-sink"].get("class") == "node"
    assert elements["edge-users"].get("class") == "edge heat-2"
    # Plain "-" in the markup, not Graphviz's "&#45;", so ids can be found in the text too.
    assert 'id="edge-users"' in svg
    edge_label = elements["edge-users"].find(f"{SVG}text")
    assert edge_label is not None
    assert edge_label.text == "users"


def test_bad_dot_raises_graph_render_error_naming_the_source() -> None:
    with pytest.raises(GraphRenderError, match=r"'digraph \{ a -> \}'"):
        render_svg("digraph {\n  a -> }")


def test_dot_binary_on_path_gets_a_turn_and_its_error_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dot = tmp_path / "dot"
    fake_dot.write_text(
        "#!/bin/sh\necho \"Error: <stdin>: syntax error in line 2 near '}'\" >&2\nexit 1\n"
    )
    fake_dot.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(GraphRenderError, match=r"syntax error in line 2 near '\}'"):
        render_svg("digraph {\n  a -> }")


def test_renderer_recovers_after_a_bad_graph() -> None:
    with pytest.raises(GraphRenderError):
        render_svg("graph { a -> b }")

    assert "node-source" in _by_id(render_svg(SMALL))


def test_cache_returns_the_same_object() -> None:
    first = render_svg(SMALL)

    assert render_svg(SMALL) is first
    graph.clear_cache()
    again = render_svg(SMALL)
    assert again is not first
    assert again == first


def test_cache_forgets_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph, "CACHE_MAX_ENTRIES", 2)
    sources = [f'digraph {{ n [label="graph {i}"] }}' for i in range(3)]
    first = render_svg(sources[0])
    second = render_svg(sources[1])
    assert render_svg(sources[0]) is first  # now the most recently used

    render_svg(sources[2])  # evicts sources[1]

    assert render_svg(sources[0]) is first
    assert render_svg(sources[1]) is not second


def test_concurrent_renders_from_threads_each_get_their_own_graph() -> None:
    sources = [f'digraph {{ a -> b [id="edge-{i}" label="io {i}"] }}' for i in range(24)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = render_svg(sources[index])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sources))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for index, svg in results.items():
        assert f'id="edge-{index}"' in svg
        assert f">io {index}<" in svg


@pytest.mark.anyio
async def test_async_render_matches_sync_and_uses_the_cache() -> None:
    svg = await render_svg_async(SMALL)

    assert svg == render_svg(SMALL)
    assert await render_svg_async(SMALL) is svg
