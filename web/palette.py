"""The registry as the designer offers it: grouped by module, and asked
"who produces this IO, who reads it?" for suggestions and the inspector.

Built per request from :meth:`Telemetry.processors` (the designer keeps no
state on the server); building the index is linear in the registry, so 500
processors cost well under a millisecond here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from datagraph.snapshots import ProcessorInfo

__all__ = ["PaletteEntry", "Registry", "Suggestion", "grouped"]


@dataclass(frozen=True)
class PaletteEntry:
    """One processor of the palette, its text made ready here: rendering 500 of
    them with Jinja filters costs several times what printing prepared strings does."""

    name: str
    ports: str
    online: bool
    wait: bool
    #: The add button's ``hx-vals`` (JSON).
    add: str


#: Shown for a processor without inputs, or without outputs.
NONE = "\N{EN DASH}"


def _entry(info: ProcessorInfo) -> PaletteEntry:
    inputs = ", ".join(p.name for p in info.inputs) or NONE
    outputs = ", ".join(p.name for p in info.outputs) or NONE
    ports = f"{inputs} \N{RIGHTWARDS ARROW} {outputs}"
    return PaletteEntry(info.name, ports, info.online, info.wait, json.dumps({"add": info.name}))


def grouped(infos: Iterable[ProcessorInfo]) -> list[tuple[str, list[PaletteEntry]]]:
    """Processors by the module that implements them, modules and names in order."""
    groups: dict[str, list[ProcessorInfo]] = {}
    for info in infos:
        groups.setdefault(info.module or "(module unknown)", []).append(info)
    return [
        (module, [_entry(i) for i in sorted(group, key=lambda i: i.name)])
        for module, group in sorted(groups.items())
    ]


@dataclass(frozen=True)
class Suggestion:
    """Registered processors that would produce an input the design still needs
    (``kind == "produce"``), or read one of its final outputs (``"consume"``)."""

    io: str
    kind: str
    candidates: tuple[ProcessorInfo, ...]

    @property
    def text(self) -> str:
        if self.kind == "produce":
            if not self.candidates:
                return f"no registered processor produces {self.io!r}: give it at launch"
            if len(self.candidates) == 1:
                return f"add {self.candidates[0].name} to produce {self.io!r}"
            return f"{len(self.candidates)} registered processors produce {self.io!r}"
        if len(self.candidates) == 1:
            return f"add {self.candidates[0].name} to read {self.io!r}"
        return f"{len(self.candidates)} registered processors read {self.io!r}"


class Registry:
    """Who produces and who reads each IO, among registered processors."""

    def __init__(self, infos: Iterable[ProcessorInfo]) -> None:
        self.infos = {info.name: info for info in infos}
        self._producers: dict[str, list[ProcessorInfo]] = {}
        self._readers: dict[str, list[ProcessorInfo]] = {}
        for info in self.infos.values():
            for port in info.outputs:
                self._producers.setdefault(port.name, []).append(info)
            for port in info.inputs:
                self._readers.setdefault(port.name, []).append(info)

    def producers(self, io: str) -> list[ProcessorInfo]:
        return list(self._producers.get(io, ()))

    def readers(self, io: str) -> list[ProcessorInfo]:
        return list(self._readers.get(io, ()))

    def suggestions(
        self, selected: Iterable[str], needed: Sequence[str], final: Sequence[str]
    ) -> list[Suggestion]:
        """For each input still ``needed`` the processors not yet ``selected`` that
        produce it, and for each ``final`` output those that read it (listed only
        when there are some)."""
        chosen = set(selected)
        result = [
            Suggestion(io, "produce", tuple(p for p in self.producers(io) if p.name not in chosen))
            for io in needed
        ]
        for io in final:
            readers = tuple(p for p in self.readers(io) if p.name not in chosen)
            if readers:
                result.append(Suggestion(io, "consume", readers))
        return result
