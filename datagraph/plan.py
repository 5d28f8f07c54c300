"""A run's execution plan: what every participant needs to know about a run.

The plan is stored with the run record, so a worker in another service can
run its processor knowing only the run id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from .flow import Flow

__all__ = ["Plan"]


@dataclass(frozen=True)
class Plan:
    run_id: str
    flow: dict[str, Any]
    producers: dict[str, str]
    readers: dict[str, list[str]]
    floating_inputs: list[str]
    outputs: list[str]
    partitions: dict[str, int]
    max_backlog: dict[str, int]
    trim: bool
    #: The run's inputs in hand in the process that started it: per input, its stream
    #: entries ``(id, field, payload)`` exactly as written. Processors dispatched in that
    #: process take them from here instead of reading them back; never stored, so a
    #: processor anywhere else reads the store.
    given: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, run_id: str, flow: Flow, *, outputs: list[str], default_backlog: int, trim: bool) -> Plan:
        topo = flow.topology
        return cls(
            run_id=run_id,
            flow=flow.spec(),
            producers=dict(topo.producers),
            readers={io: list(r) for io, r in topo.readers.items()},
            floating_inputs=list(topo.floating_inputs),
            outputs=outputs,
            partitions=dict(topo.partitions),
            max_backlog={p.name: p.max_backlog or default_backlog for p in flow.processors},
            trim=trim,
        )

    @property
    def processors(self) -> list[dict[str, Any]]:
        procs: list[dict[str, Any]] = self.flow["processors"]
        return procs

    def processor(self, name: str) -> dict[str, Any]:
        for spec in self.processors:
            if spec["name"] == name:
                return spec
        raise KeyError(name)

    def upstream(self, name: str) -> set[str]:
        """Every processor whose output ``name`` reads, directly or not."""
        found: set[str] = set()
        frontier = [name]
        while frontier:
            for io in self.processor(frontier.pop())["inputs"]:
                producer = self.producers.get(io)
                if producer is not None and producer not in found:
                    found.add(producer)
                    frontier.append(producer)
        return found

    def downstream(self, name: str) -> set[str]:
        """Every processor that reads, directly or not, what ``name`` writes."""
        found: set[str] = set()
        frontier = [name]
        while frontier:
            for io in self.processor(frontier.pop())["outputs"]:
                for reader in self.readers.get(io, ()):
                    if reader not in found:
                        found.add(reader)
                        frontier.append(reader)
        return found

    @property
    def ios(self) -> list[str]:
        return list(dict.fromkeys([*self.floating_inputs, *self.producers]))

    def to_json(self) -> str:
        # A shallow dict: json.dumps walks the nested dicts and lists itself
        # (dataclasses.asdict would deep-copy them first, on every run started).
        return json.dumps(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name != "given"}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        return cls(**json.loads(text))
