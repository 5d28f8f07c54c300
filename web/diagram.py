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

__all__ = ["Diagram", "DiagramEdge", "design_edges", "diagram"]

#: Widths of the placeholders (characters): the longest text they will hold.
_EDGE_TEXT_WIDTH = 12
_NODE_TEXT_WIDTH = 18

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


def diagram(
    processors: Sequence[tuple[str, bool]],
    edges: Iterable[DiagramEdge],
    *,
    live: bool,
    node_classes: Mapping[str, str] | None = None,
    edge_classes: Mapping[tuple[str, str], str] | None = None,
) -> Diagram:
    """The DOT of processors ``(name, wait)`` joined by ``edges``.

    ``live`` leaves placeholders for :meth:`Diagram.fill`; otherwise nodes and
    edges get ``node_classes`` / ``edge_classes`` (processor name, or
    (io, target)) and plain labels.
    """
    node_classes = node_classes or {}
    edge_classes = edge_classes or {}
    out = Diagram(dot="")
    lines = [
        "digraph flow {",
        '  graph [rankdir=LR bgcolor="transparent" nodesep=0.3 ranksep=0.55 pad=0.1 '
        'fontname="Helvetica"];',
        '  node [fontname="Helvetica" fontsize=11 shape=box style="rounded,filled" '
        'fillcolor="#eef2f7" margin="0.14,0.06"];',
        '  edge [fontname="Helvetica" fontsize=9 arrowsize=0.7];',
    ]
    for index, (name, wait) in enumerate(processors):
        title = name + (" (waits)" if wait else "")
        if live:
            out.nodes[name] = index
            label = _label(title, f"%%N{index}%%".ljust(_NODE_TEXT_WIDTH, "_"))
            css = _quote(f"%%CN{index}%%")
        else:
            label = _label(title)
            css = _quote(node_classes.get(name, "processor"))
        lines.append(f"  {_quote(name)} {_attrs(id=_quote('node-' + name), label=label, **{'class': css})};")
    seen_inputs: set[str] = set()
    seen_outputs: set[str] = set()
    seen_ids: dict[str, int] = {}
    for index, edge in enumerate(edges):
        source, target = edge.source, edge.target
        if source == INPUT:
            source = f"input {edge.io}"
            if edge.io not in seen_inputs:
                seen_inputs.add(edge.io)
                lines.append(
                    f"  {_quote(source)} "
                    f"{_attrs(id=_quote('input-' + edge.io), label=_label(edge.io), shape='ellipse', style='dashed', **{'class': _quote('io-node')})};"  # noqa: E501
                )
        if target == OUTPUT:
            target = f"output {edge.io}"
            if edge.io not in seen_outputs:
                seen_outputs.add(edge.io)
                lines.append(
                    f"  {_quote(target)} "
                    f"{_attrs(id=_quote('output-' + edge.io), label=_label(edge.io), shape='ellipse', style='dashed', **{'class': _quote('io-node')})};"  # noqa: E501
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
            label = _label(edge.io)
            css = _quote(edge_classes.get(key, "heat-0"))
        lines.append(
            f"  {_quote(source)} -> {_quote(target)} "
            f"{_attrs(id=_quote(dom_id), label=label, **{'class': css})};"
        )
    lines.append("}")
    out.dot = "\n".join(lines) + "\n"
    return out
