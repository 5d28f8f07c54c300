"""Where a flow diagram's processors go: its partitions (stages) and how wide it is.

Graphviz does the layout itself; this module answers the two questions asked
before handing it the DOT: which processors run in which partition (drawn as
stages), and whether the flow fits a page laid out left to right or should be
laid out top to bottom. Both work on any wiring the designer may hold,
including invalid ones (a cycle gives no partitions and the widest estimate).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from datagraph.snapshots import INPUT, OUTPUT

if TYPE_CHECKING:
    from .diagram import DiagramEdge

__all__ = ["EDGE_FONT_PT", "NODE_FONT_PT", "estimated_width", "partitions"]

#: Font sizes (points; an SVG shown at its natural size draws 1 pt as 4/3 px).
NODE_FONT_PT = 11
EDGE_FONT_PT = 10


def _in_order(
    names: Iterable[str], edges: Iterable[DiagramEdge]
) -> tuple[list[str] | None, dict[str, set[str]]]:
    """The processors upstream first (None when the wiring has a cycle), and each one's upstream."""
    upstream: dict[str, set[str]] = {name: set() for name in names}
    for edge in edges:
        if edge.source in upstream and edge.target in upstream:
            upstream[edge.target].add(edge.source)
    order: list[str] = []
    placed: set[str] = set()
    remaining = dict(upstream)
    while remaining:
        ready = [name for name, ups in remaining.items() if ups <= placed]
        if not ready:
            return None, upstream
        for name in ready:
            order.append(name)
            placed.add(name)
            del remaining[name]
    return order, upstream


def partitions(processors: Sequence[tuple[str, bool]], edges: Iterable[DiagramEdge]) -> dict[str, int]:
    """Each processor's partition, as ``Flow.resolve()`` numbers them: a ``wait=True``
    processor fed by another one starts the next partition, and what reads from a
    partition is in it or a later one. Empty when the wiring has a cycle."""
    waits = dict(processors)
    order, upstream = _in_order(waits, edges)
    result: dict[str, int] = {}
    for name in order or ():
        base = max((result[u] for u in upstream[name]), default=0)
        result[name] = base + (1 if waits[name] and upstream[name] else 0)
    return result


def _columns(processors: Sequence[tuple[str, bool]], edges: Sequence[DiagramEdge]) -> dict[str, int]:
    """Each processor's column laid out left to right (its longest path from a source, from 1)."""
    names = sorted(name for name, _ in processors)
    order, upstream = _in_order(names, edges)
    if order is None:  # a cycle: one column each, the widest it could be
        return {name: i + 1 for i, name in enumerate(names)}
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = 1 + max((depth[u] for u in upstream[name]), default=0)
    return depth


def estimated_width(
    processors: Sequence[tuple[str, bool]],
    edges: Sequence[DiagramEdge],
    label_chars: Mapping[str, int],
    edge_chars: int,
    node_font_pt: float = NODE_FONT_PT,
    edge_font_pt: float = EDGE_FONT_PT,
) -> float:
    """About how wide (points) the graph is laid out left to right: its columns of
    nodes (``label_chars``: the widest line of each processor's label) and, between
    them, columns of edge labels (``edge_chars`` wide) and rank separation."""
    column_of = _columns(processors, edges)
    node_cols: dict[int, int] = {}
    for name, col in column_of.items():
        node_cols[col] = max(node_cols.get(col, 0), label_chars.get(name, len(name)))
    io_chars = max((len(e.io) for e in edges), default=0)
    if any(e.source == INPUT for e in edges):
        node_cols[0] = io_chars
    if any(e.target == OUTPUT for e in edges):
        node_cols[max(node_cols, default=0) + 1] = io_chars
    char = 0.55  # a Helvetica character is about 0.55 em wide, digits and lower case
    nodes = sum(chars * char * node_font_pt + 22 for chars in node_cols.values())
    gaps = max(len(node_cols) - 1, 0) * (edge_chars * char * edge_font_pt + 0.55 * 72)
    return nodes + gaps
