"""Assembling a flow from registered processors: validation and export.

The designer keeps no state on the server: the page holds the selected
processor names, and every change sends them back to be assembled here, so
the graph and the messages always describe exactly what is on screen.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datagraph.exceptions import CycleError, DatagraphError
from datagraph.flow import Flow
from datagraph.snapshots import INPUT, OUTPUT, PortInfo, ProcessorInfo

from .compat import Incompatibility, incompatibility
from .diagram import DiagramEdge, design_edges

__all__ = ["Design", "TypedEdge", "assemble", "export_python", "spec_of"]


def spec_of(info: ProcessorInfo) -> dict[str, Any]:
    """A registered processor as a ``Processor.spec()`` mapping."""
    return {
        "name": info.name,
        "inputs": [p.name for p in info.inputs],
        "outputs": [p.name for p in info.outputs],
        "wait": info.wait,
        "max_backlog": info.max_backlog,
    }


@dataclass
class Message:
    #: "error" (the flow cannot run), "warning" (it may not run now) or "info".
    level: str
    text: str


@dataclass(frozen=True)
class TypedEdge:
    """An edge of the design with the type flowing along it."""

    edge: DiagramEdge
    #: The producer's output type (the reader's input type for a run input); "" when unknown.
    type: str
    #: The reader's input type, "" when the edge goes to the caller or is unknown.
    read_as: str = ""
    #: Why the reader cannot take what the producer yields, if it cannot.
    mismatch: Incompatibility | None = None


@dataclass
class Design:
    """A set of processors as assembled in the designer."""

    names: list[str]
    specs: list[dict[str, Any]]
    messages: list[Message] = field(default_factory=list)
    #: The resolved flow; None while the assembly has errors.
    flow: Flow | None = None
    floating_inputs: tuple[str, ...] = ()
    final_outputs: tuple[str, ...] = ()
    #: Processors to mark: in a cycle, producing an IO another one produces too, without
    #: an online worker.
    in_cycle: set[str] = field(default_factory=set)
    duplicate_producers: set[str] = field(default_factory=set)
    offline: set[str] = field(default_factory=set)
    #: Every edge with its type, and the edges whose types do not fit.
    edges: list[TypedEdge] = field(default_factory=list)

    @property
    def mismatches(self) -> list[TypedEdge]:
        return [e for e in self.edges if e.mismatch is not None]

    @property
    def valid(self) -> bool:
        return self.flow is not None

    @property
    def errors(self) -> list[Message]:
        return [m for m in self.messages if m.level == "error"]


def assemble(
    names: Iterable[str],
    infos: Mapping[str, ProcessorInfo],
    fallback_specs: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    name: str | None = None,
) -> Design:
    """Assemble ``names`` (duplicates dropped) and validate the result.

    A processor that is no longer registered keeps its spec from
    ``fallback_specs`` (a saved flow's) when there is one.
    """
    ordered = list(dict.fromkeys(n for n in names if n))
    design = Design(names=[], specs=[])
    for proc in ordered:
        info = infos.get(proc)
        if info is not None:
            design.specs.append(spec_of(info))
            if not info.online:
                design.offline.add(proc)
                design.messages.append(Message(
                    "warning",
                    f"processor {proc!r} has no online worker: a run would fail to start "
                    "until a service implementing it is running",
                ))
        elif fallback_specs and proc in fallback_specs:
            design.specs.append(dict(fallback_specs[proc]))
            design.offline.add(proc)
            design.messages.append(Message(
                "warning", f"processor {proc!r} is not registered by any worker (kept from the saved flow)"
            ))
        else:
            design.messages.append(Message(
                "error", f"processor {proc!r} is not registered by any worker; remove it"
            ))
            continue
        design.names.append(proc)
    if not design.specs:
        design.messages.append(Message("info", "add processors from the list to assemble a flow"))
        return design

    producers: dict[str, list[str]] = {}
    for spec in design.specs:
        for io in spec["outputs"]:
            producers.setdefault(io, []).append(spec["name"])
    for who in producers.values():
        if len(who) > 1:
            design.duplicate_producers.update(who)

    try:
        flow = Flow.from_spec({"name": name, "processors": design.specs}).resolve()
    except CycleError as exc:
        design.in_cycle = {p for cycle in exc.cycles for p in cycle}
        design.messages.insert(0, Message("error", str(exc)))
    except DatagraphError as exc:
        design.messages.insert(0, Message("error", str(exc)))
    else:
        if not design.errors:
            design.flow = flow
        topo = flow.topology
        design.floating_inputs, design.final_outputs = topo.floating_inputs, topo.final_outputs
        if topo.floating_inputs:
            them = ", ".join(repr(io) for io in topo.floating_inputs)
            design.messages.append(Message(
                "info", f"inputs still needed (no processor here produces them; give them at launch): {them}"
            ))
    design.edges = typed_edges(design.specs, infos)
    for typed in design.mismatches:
        design.messages.append(Message("warning", mismatch_message(typed)))
    if design.flow is None and not design.floating_inputs:
        produced = set(producers)
        design.floating_inputs = tuple(dict.fromkeys(
            io for spec in design.specs for io in spec["inputs"] if io not in produced
        ))
    return design


def _port(info: ProcessorInfo | None, name: str, outputs: bool) -> PortInfo | None:
    if info is None:
        return None
    return next((p for p in (info.outputs if outputs else info.inputs) if p.name == name), None)


def typed_edges(specs: Sequence[Mapping[str, Any]], infos: Mapping[str, ProcessorInfo]) -> list[TypedEdge]:
    """The design's edges, each with the type along it and whether its reader can take it."""
    result = []
    for edge in design_edges(specs):
        produced = None if edge.source == INPUT else _port(infos.get(edge.source), edge.io, True)
        read = None if edge.target == OUTPUT else _port(infos.get(edge.target), edge.io, False)
        mismatch = None
        if produced is not None and read is not None:
            mismatch = incompatibility(produced.schema, read.schema)
        shown = produced or read
        result.append(TypedEdge(
            edge, shown.type if shown is not None else "", read.type if read is not None else "", mismatch,
        ))
    return result


def mismatch_message(typed: TypedEdge) -> str:
    edge, problem = typed.edge, typed.mismatch
    detail = f" ({problem})" if problem is not None else ""
    return (
        f"type mismatch on {edge.io!r}: {edge.source!r} produces {typed.type}, but {edge.target!r} "
        f"reads it as {typed.read_as}{detail}. The flow still launches (values are not converted); "
        f"to fix it, change one of the two annotations, or put a processor between them that turns "
        f"{typed.type} into {typed.read_as}"
    )


_IDENTIFIER = re.compile(r"[^0-9a-zA-Z_]")


def _variable(name: str, taken: set[str]) -> str:
    base = _IDENTIFIER.sub("_", name) or "processor"
    if base[0].isdigit():
        base = f"p_{base}"
    if keyword.iskeyword(base) or base in {"Flow", "Processor", "flow"}:
        base = f"{base}_"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def export_python(specs: Sequence[Mapping[str, Any]], name: str | None = None) -> str:
    """Python that builds the same flow from processor specs."""
    lines = ["from datagraph import Flow, Processor", ""]
    taken: set[str] = set()
    variables = []
    for spec in specs:
        var = _variable(str(spec["name"]), taken)
        variables.append(var)
        args = [
            f"name={json.dumps(str(spec['name']))}",
            f"inputs={json.dumps([str(i) for i in spec.get('inputs') or ()])}",
            f"outputs={json.dumps([str(o) for o in spec.get('outputs') or ()])}",
        ]
        if spec.get("wait"):
            args.append("wait=True")
        if isinstance(spec.get("max_backlog"), int):
            args.append(f"max_backlog={spec['max_backlog']}")
        lines.append(f"{var} = Processor({', '.join(args)})")
    lines.append("")
    named = f", name={json.dumps(name)}" if name else ""
    lines.append(f"flow = Flow.from_processors({', '.join(variables)}{named}).resolve()")
    return "\n".join(lines) + "\n"
