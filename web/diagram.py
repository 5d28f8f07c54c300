"""Flow diagrams as DOT, and live figures written into their SVG.

Element ids follow ``Flow.visualize(node_ids=True)``: ``node-<processor>``,
``input-<io>``, ``output-<io>``, ``edge-<io>-<reader>`` and
``edge-<io>-out`` (an output returned to the run's caller).

A live diagram is laid out once: each edge's two figure lines (under its
IO name) and each node's status line are fixed-width placeholders, and so
is each element's class. Graphviz renders that DOT once (``web.graph`` caches it by its text);
every update then only substitutes the placeholders in the SVG, so the
layout never jumps while figures change and an update costs no render.

Every string is written into DOT double-quoted with ``\\`` and ``"``
escaped, never as an HTML-like label, and Graphviz escapes ``<``, ``>`` and
``&`` in its SVG output: a name from the store cannot become markup.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from datagraph.snapshots import INPUT, OUTPUT

from .layout import EDGE_FONT_PT, NODE_FONT_PT, estimated_width, partitions

__all__ = ["Diagram", "DiagramEdge", "design_edges", "diagram"]

#: Widths of the placeholders (characters): the longest text they will hold.
_EDGE_TEXT_WIDTH = 12
_NODE_TEXT_WIDTH = 18

#: The widest (points, about 930 px) a flow is laid out left to right before it is laid
#: out top to bottom instead: pages show graphs at their natural size, so text stays readable.
MAX_WIDTH_PT = 700

_TOKEN = re.compile(r"%%([ENQ]\d+|C[EN]\d+)%%_*")


@dataclass(frozen=True)
class DiagramEdge:
    io: str
    #: Producing processor, or :data:`~datagraph.snapshots.INPUT` for a run input.
    source: str
    #: Reading processor, or :data:`~datagraph.snapshots.OUTPUT` for the caller.
    target: str


def edge_id(io: str, target: str) -> str:
    return f"edge-{io}-{'out' if target == OUTPUT else target}"


@dataclass
class Diagram:
    """DOT text plus where its placeholders are."""

    dot: str
    #: (io, target) -> placeholder index of the edge.
    edges: dict[tuple[str, str], int] = field(default_factory=dict)
    #: processor -> placeholder index of the node.
    nodes: dict[str, int] = field(default_factory=dict)

    def fill(
        self,
        svg: str,
        edge_text: Mapping[tuple[str, str], tuple[str, str]],
        node_text: Mapping[str, tuple[str, str]],
    ) -> str:
        """``svg`` (rendered from :attr:`dot`) with each placeholder replaced.

        ``edge_text`` maps (io, target) to (figures, classes), where the
        figures are two lines separated by a newline; ``node_text`` maps a
        processor to (status line, classes). What is missing becomes empty.
        """
        values: dict[str, str] = {}
        for key, index in self.edges.items():
            text, classes = edge_text.get(key, ("", ""))
            first, _, second = text.partition("\n")
            values[f"E{index}"], values[f"Q{index}"], values[f"CE{index}"] = first, second, classes
        for name, index in self.nodes.items():
            text, classes = node_text.get(name, ("", ""))
            values[f"N{index}"], values[f"CN{index}"] = text, classes
        return _TOKEN.sub(lambda m: html.escape(values.get(m.group(1), "")), svg)


def _quote(text: str) -> str:
    """A DOT double-quoted string showing ``text`` literally (one line)."""
    flat = " ".join(str(text).splitlines())
    return '"' + flat.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(*lines: str) -> str:
    escaped = [" ".join(line.splitlines()).replace("\\", "\\\\").replace('"', '\\"') for line in lines]
    return '"' + "\\n".join(escaped) + '"'


def _attrs(**attrs: str) -> str:
    return "[" + " ".join(f"{k}={v}" for k, v in attrs.items()) + "]"


def design_edges(processors: Sequence[Mapping[str, object]]) -> list[DiagramEdge]:
    """Edges of an assembled (possibly invalid) flow: every producer of an IO to
    every reader; IOs nobody produces come from the run's inputs, IOs nobody
    reads go to the caller."""
    producers: dict[str, list[str]] = {}
    for spec in processors:
        for io in _names(spec.get("outputs")):
            producers.setdefault(io, []).append(str(spec["name"]))
    read: set[str] = set()
    edges: list[DiagramEdge] = []
    for spec in processors:
        for io in _names(spec.get("inputs")):
            read.add(io)
            for source in producers.get(io, [INPUT]):
                edges.append(DiagramEdge(io, source, str(spec["name"])))
    for io, sources in producers.items():
        if io not in read:
            edges.extend(DiagramEdge(io, source, OUTPUT) for source in sources)
    return edges


def _names(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def _stage_tooltip(index: int) -> str:
    if index == 0:
        return "stage 1: starts with the run, values stream through as they are written"
    return (
        f"stage {index + 1}: its waiting processors start once every stream they read is complete; "
        "what reads from them follows"
    )


def diagram(
    processors: Sequence[tuple[str, bool]],
    edges: Iterable[DiagramEdge],
    *,
    live: bool,
    node_classes: Mapping[str, str] | None = None,
    edge_classes: Mapping[tuple[str, str], str] | None = None,
    edge_notes: Mapping[tuple[str, str], str] | None = None,
    links: Mapping[str, str] | None = None,
    selected: str = "",
    max_width_pt: float | None = None,
) -> Diagram:
    """The DOT of processors ``(name, wait)`` joined by ``edges``.

    ``live`` leaves placeholders for :meth:`Diagram.fill`; otherwise nodes and
    edges get ``node_classes`` / ``edge_classes`` (processor name, or
    (io, target)) and plain labels, an edge's label with its line from
    ``edge_notes`` (the type flowing along it) under the IO name. ``links``
    maps element ids (``node-<processor>``, ``input-<io>``, ``output-<io>``)
    to the address the node links to; the element with id ``selected`` gets the
    class ``selected`` too.

    A flow with ``wait=True`` processors is drawn in stages (Graphviz
    clusters, ``id="stage-<n>"``, labelled "stage <n>" with what that means as
    their tooltip), one per partition, with the edges into a waiting processor
    ending in a bar: the barrier. A flow that would be wider
    than ``max_width_pt`` (default :data:`MAX_WIDTH_PT`) laid out left to right
    is laid out top to bottom, so that it keeps its natural size (its text
    readable) in a page's width.
    """
    node_classes = node_classes or {}
    edge_classes = edge_classes or {}
    edge_notes = edge_notes or {}
    links = links or {}
    edges = list(edges)
    stage_of = partitions(processors, edges)
    waits = dict(processors)
    edge_chars = max(
        [_EDGE_TEXT_WIDTH] if live else [len(e.io) for e in edges] + [len(n) for n in edge_notes.values()],
        default=0,
    )
    label_chars = {
        name: max(len(name) + (8 if wait else 0), _NODE_TEXT_WIDTH if live else 0)
        for name, wait in processors
    }
    budget = MAX_WIDTH_PT if max_width_pt is None else max_width_pt
    wide = estimated_width(processors, edges, label_chars, edge_chars, NODE_FONT_PT, EDGE_FONT_PT) > budget
    rankdir = "TB" if wide else "LR"
    out = Diagram(dot="")
    lines = [
        "digraph flow {",
        f'  graph [rankdir={rankdir} bgcolor="transparent" nodesep=0.3 ranksep=0.55 pad=0.1 '
        'fontname="Helvetica" fontsize=10];',
        f'  node [fontname="Helvetica" fontsize={NODE_FONT_PT} shape=box style="rounded,filled" '
        'fillcolor="#eef2f7" margin="0.14,0.06"];',
        f'  edge [fontname="Helvetica" fontsize={EDGE_FONT_PT} arrowsize=0.7];',
    ]

    def io_class(dom_id: str) -> str:
        return "io-node selected" if dom_id == selected else "io-node"

    def link(dom_id: str) -> dict[str, str]:
        href = links.get(dom_id)
        if not href:
            return {}
        kind, _, name = dom_id.partition("-")
        what = "its ports, types and workers" if kind == "node" else "what produces and reads it"
        return {"href": _quote(href), "tooltip": _quote(f"{name}: {what}")}

    stages: dict[int, list[str]] = {}
    for index, (name, wait) in enumerate(processors):
        title = name + (" (waits)" if wait else "")
        if live:
            out.nodes[name] = index
            label = _label(title, f"%%N{index}%%".ljust(_NODE_TEXT_WIDTH, "_"))
            css = _quote(f"%%CN{index}%%")
        else:
            label = _label(title)
            marked = " selected" if selected == "node-" + name else ""
            css = _quote(node_classes.get(name, "processor") + marked)
        node_id = "node-" + name
        stages.setdefault(stage_of.get(name, 0), []).append(
            f"  {_quote(name)} {_attrs(id=_quote(node_id), label=label, **{'class': css}, **link(node_id))};"
        )
    if len(stages) > 1:
        for index in sorted(stages):
            lines += [
                f"  subgraph {_quote(f'cluster_stage_{index + 1}')} {{",
                f'    graph [id={_quote(f"stage-{index + 1}")} label={_quote(f"stage {index + 1}")} '
                f"tooltip={_quote(_stage_tooltip(index))} "
                'labeljust=l style="dashed,rounded" color="#8a96a3" class="stage"];',
                *("  " + line for line in stages[index]),
                "  }",
            ]
    else:
        lines += [line for group in stages.values() for line in group]
    seen_inputs: set[str] = set()
    seen_outputs: set[str] = set()
    seen_ids: dict[str, int] = {}
    for index, edge in enumerate(edges):
        source, target = edge.source, edge.target
        if source == INPUT:
            source = f"input {edge.io}"
            if edge.io not in seen_inputs:
                seen_inputs.add(edge.io)
                io_id = "input-" + edge.io
                lines.append(
                    f"  {_quote(source)} "
                    f"{_attrs(id=_quote(io_id), label=_label(edge.io), shape='ellipse', style='dashed', **{'class': _quote(io_class(io_id))}, **link(io_id))};"  # noqa: E501
                )
        if target == OUTPUT:
            target = f"output {edge.io}"
            if edge.io not in seen_outputs:
                seen_outputs.add(edge.io)
                io_id = "output-" + edge.io
                lines.append(
                    f"  {_quote(target)} "
                    f"{_attrs(id=_quote(io_id), label=_label(edge.io), shape='ellipse', style='dashed', **{'class': _quote(io_class(io_id))}, **link(io_id))};"  # noqa: E501
                )
        dom_id = edge_id(edge.io, edge.target)
        seen_ids[dom_id] = seen_ids.get(dom_id, 0) + 1
        if seen_ids[dom_id] > 1:  # the same IO produced twice: keep ids unique
            dom_id = f"{dom_id}-{seen_ids[dom_id]}"
        key = (edge.io, edge.target)
        if live:
            out.edges[key] = index
            label = _label(
                edge.io,
                f"%%E{index}%%".ljust(_EDGE_TEXT_WIDTH, "_"),
                f"%%Q{index}%%".ljust(_EDGE_TEXT_WIDTH, "_"),
            )
            css = _quote(f"%%CE{index}%%")
        else:
            note = edge_notes.get(key)
            label = _label(edge.io, note) if note else _label(edge.io)
            css = _quote(edge_classes.get(key, "heat-0"))
        into_barrier = len(stages) > 1 and waits.get(edge.target)
        barrier = {"arrowhead": "normaltee", "arrowsize": "1"} if into_barrier else {}
        lines.append(
            f"  {_quote(source)} -> {_quote(target)} "
            f"{_attrs(id=_quote(dom_id), label=label, **{'class': css}, **barrier)};"
        )
    lines.append("}")
    out.dot = "\n".join(lines) + "\n"
    return out
