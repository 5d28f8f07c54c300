"""Flows: processors wired by matching IO names.

``Flow.from_processors(a, b, c).resolve()`` checks that the wiring can run
(no cycles, each IO produced at most once) and computes its topology: which
processor produces and reads each IO, the floating inputs a run must be
given, the final outputs, and partitions (a ``wait=True`` processor starts a
new partition and runs only once every stream it reads is complete).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .exceptions import CycleError, DuplicateOutputError, FlowError, UnresolvedFlowError
from .processor import Processor

if TYPE_CHECKING:
    import graphviz

__all__ = ["Flow", "Topology"]


@dataclass(frozen=True)
class Topology:
    """What ``resolve()`` computes."""

    order: tuple[str, ...]
    producers: dict[str, str]
    readers: dict[str, tuple[str, ...]]
    floating_inputs: tuple[str, ...]
    final_outputs: tuple[str, ...]
    partitions: dict[str, int]

    @property
    def ios(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.floating_inputs, *self.producers]))


class Flow:
    """A set of processors wired by IO name."""

    def __init__(
        self,
        processors: Iterable[Processor],
        *,
        name: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException] | str] = (),
    ) -> None:
        self.processors: tuple[Processor, ...] = tuple(processors)
        self.name = name
        #: Retries of this flow's runs (None: the ``retries`` setting); see ``datagraph.retries``.
        self.retries = retries
        #: Exception types retried besides lost workers and the like.
        self.retry_on = tuple(retry_on)
        self._topology: Topology | None = None
        for p in self.processors:
            if not isinstance(p, Processor):
                raise FlowError(f"Flow takes Processor objects, got {p!r}")
        seen: dict[str, Processor] = {}
        for p in self.processors:
            other = seen.get(p.name)
            if other is not None and other is not p:
                raise FlowError(f"the flow has two different processors named {p.name!r}")
            seen[p.name] = p
        self.processors = tuple(seen.values())

    @classmethod
    def from_processors(
        cls,
        *processors: Processor,
        name: str | None = None,
        retries: int | None = None,
        retry_on: Iterable[type[BaseException] | str] = (),
    ) -> Flow:
        if len(processors) == 1 and not isinstance(processors[0], Processor):
            processors = tuple(processors[0])
        if not processors:
            raise FlowError("a flow needs at least one processor")
        return cls(processors, name=name, retries=retries, retry_on=retry_on)

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.processors)
        state = "resolved" if self._topology else "unresolved"
        return f"<Flow [{names}] {state}>"

    @property
    def resolved(self) -> bool:
        return self._topology is not None

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            raise UnresolvedFlowError(
                "the flow is not resolved; call flow.resolve() (or "
                "Flow.from_processors(...).resolve()) before starting or inspecting it"
            )
        return self._topology

    def processor(self, name: str) -> Processor:
        for p in self.processors:
            if p.name == name:
                return p
        raise FlowError(f"the flow has no processor named {name!r}")

    def resolve(self) -> Flow:
        """Validate the wiring and compute the topology; returns the flow."""
        producers: dict[str, str] = {}
        for p in self.processors:
            for io in p.outputs:
                if io in producers:
                    raise DuplicateOutputError(
                        f"IO {io!r} is produced by both {producers[io]!r} and {p.name!r}; "
                        "each IO must have exactly one producer (rename one of the outputs)"
                    )
                producers[io] = p.name
        upstream: dict[str, set[str]] = {p.name: set() for p in self.processors}
        for p in self.processors:
            for io in p.inputs:
                if io in producers:
                    upstream[p.name].add(producers[io])
        cycles = _cycles(upstream)
        if cycles:
            described = "; ".join(" -> ".join([*c, c[0]]) for c in cycles)
            raise CycleError(
                f"the flow has a dependency cycle: {described}; "
                "a processor cannot (indirectly) read its own output",
                cycles,
            )
        order = _topological_order(upstream, [p.name for p in self.processors])
        by_name = {p.name: p for p in self.processors}
        readers: dict[str, list[str]] = {}
        for name in order:
            for io in by_name[name].inputs:
                readers.setdefault(io, []).append(name)
        partitions: dict[str, int] = {}
        for name in order:
            base = max((partitions[u] for u in upstream[name]), default=0)
            partitions[name] = base + (1 if by_name[name].wait and upstream[name] else 0)
        floating = tuple(dict.fromkeys(io for p in self.processors for io in p.inputs if io not in producers))
        final = tuple(io for p in self.processors for io in p.outputs if io not in readers)
        self._topology = Topology(
            order=tuple(order),
            producers=producers,
            readers={io: tuple(r) for io, r in readers.items()},
            floating_inputs=floating,
            final_outputs=final,
            partitions=partitions,
        )
        return self

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "processors": [p.spec() for p in self.processors]}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Flow:
        from .processor import registry

        processors = []
        for p in spec["processors"]:
            local = registry.get(p["name"])
            processors.append(local if local is not None and local.spec() == p else Processor.from_spec(p))
        return cls(processors, name=spec.get("name"))

    def to_dot(self, *, node_ids: bool = False) -> str:
        return str(self.visualize(node_ids=node_ids).source)

    def visualize(self, *, node_ids: bool = False) -> graphviz.Digraph:
        """A Graphviz graph of processors (boxes) and IO edges; renders in notebooks."""
        import graphviz

        topo = self.topology
        graph = graphviz.Digraph(name=self.name or "flow")
        graph.attr(rankdir="LR", fontname="Helvetica", bgcolor="transparent")
        graph.attr("node", fontname="Helvetica", fontsize="11")
        graph.attr("edge", fontname="Helvetica", fontsize="10")
        # DOT reads "a:b" as node a, port b: node names are indices, labels carry names.
        node = {p.name: f"p{i}" for i, p in enumerate(self.processors)}
        inputs = {io: f"in{i}" for i, io in enumerate(topo.floating_inputs)}
        outputs = {io: f"out{i}" for i, io in enumerate(topo.final_outputs)}

        def ids(value: str) -> dict[str, str]:
            return {"id": value} if node_ids else {}

        for p in self.processors:
            label = p.name + ("\n(waits for inputs)" if p.wait else "")
            graph.node(
                node[p.name],
                label=label,
                shape="box",
                style="rounded,filled",
                fillcolor="#eef2f7",
                **ids(f"node-{p.name}"),
            )
        for io, name in inputs.items():
            graph.node(name, label=io, shape="ellipse", style="dashed", **ids(f"input-{io}"))
            for reader in topo.readers.get(io, ()):
                graph.edge(name, node[reader], label=io, **ids(f"edge-{io}-{reader}"))
        for io, producer in topo.producers.items():
            for reader in topo.readers.get(io, ()):
                graph.edge(node[producer], node[reader], label=io, **ids(f"edge-{io}-{reader}"))
            if io in outputs:
                graph.node(outputs[io], label=io, shape="ellipse", style="dashed", **ids(f"output-{io}"))
                graph.edge(node[producer], outputs[io], label=io, **ids(f"edge-{io}-out"))
        return graph


def _cycles(upstream: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node, or a self loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:
        nonlocal counter
        work = [(root, iter(sorted(upstream[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(upstream[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in upstream[node]:
                    result.append(_cycle_through(min(component), set(component), upstream))

    for name in sorted(upstream):
        if name not in index:
            visit(name)
    return sorted(result)


def _cycle_through(start: str, component: set[str], upstream: dict[str, set[str]]) -> list[str]:
    """A real cycle from ``start`` back to it, in the direction data flows.

    A strongly connected component may hold several loops; its member list is
    not itself a cycle, so walk one: the shortest path (breadth first, over
    edges inside the component) from ``start`` back to ``start``.
    """
    downstream: dict[str, list[str]] = {n: [] for n in component}
    for reader in sorted(component):
        for producer in sorted(upstream[reader] & component):
            downstream[producer].append(reader)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in downstream[node]:
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return list(reversed(path))
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")  # pragma: no cover


def _topological_order(upstream: dict[str, set[str]], declared: list[str]) -> list[str]:
    done: set[str] = set()
    order: list[str] = []
    remaining = list(declared)
    while remaining:
        ready = [n for n in remaining if upstream[n] <= done]
        for n in ready:
            done.add(n)
            order.append(n)
        remaining = [n for n in remaining if n not in done]
    return order
