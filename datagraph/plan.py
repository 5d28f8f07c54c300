"""A run's execution plan: what every participant needs to know about a run.

The plan is stored with the run record, so a worker in another service can
run its processor knowing only the run id.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, NamedTuple

from .flow import Flow, Topology
from .store import keys

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
    #: ``to_json()`` of the fields after ``run_id``, when :meth:`build` knows it already.
    json_tail: str = field(default="", compare=False, repr=False)

    @classmethod
    def build(cls, run_id: str, flow: Flow, *, outputs: list[str], default_backlog: int, trim: bool) -> Plan:
        topo = flow.topology
        values: dict[str, Any] = {
            "run_id": run_id,
            "flow": flow.spec(),
            "producers": dict(topo.producers),
            "readers": {io: list(r) for io, r in topo.readers.items()},
            "floating_inputs": list(topo.floating_inputs),
            "outputs": outputs,
            "partitions": dict(topo.partitions),
            "max_backlog": {p.name: p.max_backlog or default_backlog for p in flow.processors},
            "trim": trim,
        }
        # Everything but the run id depends on the flow and these options only: serialised
        # once for a flow started again and again, not with every run.
        options = (list(outputs), default_backlog, trim)
        template = _templates.get(flow)
        if (
            template is None
            or template.processors is not flow.processors
            or template.topology is not topo
            or template.name != flow.name
            or template.options != options
        ):
            tail = cls(**values).to_json()[len(_json_head(run_id)) :]
            template = _templates[flow] = _Template(flow.processors, topo, flow.name, options, tail)
        return cls(**values, json_tail=template.tail)

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

    @cached_property
    def done_keys(self) -> tuple[str, ...]:
        """The keys of ``store.scripts``' processor-done script: the run's stats and hash,
        then its other keys (every processor's last flush sends it)."""
        own = (keys.stats(self.run_id), keys.run(self.run_id))
        return (*own, *(k for k in keys.run_keys(self.run_id, self.ios) if k not in own))

    def to_json(self) -> str:
        if self.json_tail:
            return _json_head(self.run_id) + self.json_tail
        # A shallow dict: json.dumps walks the nested dicts and lists itself
        # (dataclasses.asdict would deep-copy them first, on every run started).
        return json.dumps(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_STORED},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        return cls(**json.loads(text))


#: Fields of a plan that ``to_json()`` leaves out.
_NOT_STORED = frozenset({"given", "json_tail"})


def _json_head(run_id: str) -> str:
    """The start of a plan's JSON, up to its run id (the first field)."""
    return '{"run_id":' + json.dumps(run_id)


class _Template(NamedTuple):
    """What a flow's plans share: valid while the flow keeps these processors, topology and name."""

    processors: tuple[Any, ...]
    topology: Topology
    name: str | None
    options: tuple[list[str], int, bool]
    tail: str


_templates: weakref.WeakKeyDictionary[Flow, _Template] = weakref.WeakKeyDictionary()
