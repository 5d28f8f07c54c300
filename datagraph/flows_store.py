"""Flows saved by name (the dashboard's designer keeps them here).

A saved flow is the flow spec (``Flow.spec()``: its name and each
processor's name, inputs, outputs, ``wait`` and ``max_backlog``) plus when it
was saved, stored as JSON in one field of the ``FLOWS`` hash. Keeping the
specs, not only the processor names, lets a flow be shown and exported even
after the workers implementing its processors went away.

Every function takes a glide client (``Telemetry.client``, or a runtime's)
and costs one round trip.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glide import GlideError as GlideBaseError

from .exceptions import FlowError, StoreError
from .flow import Flow
from .processor import Processor
from .store import keys
from .store.client import Store

__all__ = [
    "FLOW_NAME_PATTERN",
    "SavedFlow",
    "check_flow_name",
    "delete_flow",
    "duplicate_flow",
    "list_flows",
    "load_flow",
    "save_flow",
]

#: Saved flow names: letters, digits, spaces and ``_ - . :``, at most 80 characters.
FLOW_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:\- ]{1,80}")


@dataclass(frozen=True)
class SavedFlow:
    """A flow saved by name."""

    name: str
    #: Processor specs (``Processor.spec()``), in the order they were added.
    processors: tuple[dict[str, Any], ...]
    #: Unix time of the last save.
    saved: float

    @property
    def processor_names(self) -> tuple[str, ...]:
        return tuple(str(p.get("name", "")) for p in self.processors)

    def flow(self) -> Flow:
        """The flow (not resolved); raises ``FlowError`` or ``ProcessorError`` for a bad spec."""
        return Flow.from_spec({"name": self.name, "processors": list(self.processors)})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "processors": list(self.processors), "saved": self.saved}


def check_flow_name(name: str) -> str:
    """The name with surrounding spaces removed; ``FlowError`` when it cannot be used."""
    stripped = name.strip()
    if not FLOW_NAME_PATTERN.fullmatch(stripped):
        raise FlowError(
            f"flow name {name!r} cannot be used: give 1 to 80 letters, digits, spaces or _ - . :"
        )
    return stripped


def _record(name: str, processors: list[Processor] | tuple[Processor, ...]) -> str:
    if not processors:
        raise FlowError(f"flow {name!r} has no processors; add at least one before saving")
    return json.dumps(
        {"name": name, "processors": [p.spec() for p in processors], "saved": time.time()},
        separators=(",", ":"),
    )


def _parse(name: str, raw: Any) -> SavedFlow | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, Mapping):
        return None
    processors = tuple(p for p in data.get("processors") or () if isinstance(p, Mapping))
    saved = data.get("saved")
    return SavedFlow(
        name=name,
        processors=tuple(dict(p) for p in processors),
        saved=float(saved) if isinstance(saved, int | float) else 0.0,
    )


async def _call(client: Store, command: list[str], doing: str) -> Any:
    try:
        return await client.custom_command(command)
    except GlideBaseError as exc:
        raise StoreError(f"could not {doing} in Valkey: {exc}") from exc


async def save_flow(
    client: Store, name: str, processors: list[Processor] | tuple[Processor, ...]
) -> SavedFlow:
    """Save (or overwrite) the flow ``name`` made of ``processors``."""
    name = check_flow_name(name)
    record = _record(name, processors)
    await _call(client, ["HSET", keys.FLOWS, name, record], f"save flow {name!r}")
    saved = _parse(name, record)
    assert saved is not None
    return saved


async def list_flows(client: Store) -> list[SavedFlow]:
    """Every saved flow, sorted by name."""
    raw = await _call(client, ["HGETALL", keys.FLOWS], "list saved flows")
    flows = []
    for key, value in (raw or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        saved = _parse(name, value)
        if saved is not None:
            flows.append(saved)
    return sorted(flows, key=lambda f: f.name.lower())


async def load_flow(client: Store, name: str) -> SavedFlow | None:
    """The saved flow ``name``, or None."""
    raw = await _call(client, ["HGET", keys.FLOWS, name], f"load flow {name!r}")
    return _parse(name, raw) if raw is not None else None


async def delete_flow(client: Store, name: str) -> bool:
    """Delete the saved flow ``name``; False when there was none."""
    removed = await _call(client, ["HDEL", keys.FLOWS, name], f"delete flow {name!r}")
    return bool(removed)


async def duplicate_flow(client: Store, name: str, new_name: str) -> SavedFlow:
    """Save a copy of ``name`` as ``new_name``; ``FlowError`` if ``name`` is missing or
    ``new_name`` is taken."""
    new_name = check_flow_name(new_name)
    original = await load_flow(client, name)
    if original is None:
        raise FlowError(f"there is no saved flow named {name!r} to duplicate")
    record = json.dumps(
        {"name": new_name, "processors": list(original.processors), "saved": time.time()},
        separators=(",", ":"),
    )
    created = await _call(client, ["HSETNX", keys.FLOWS, new_name, record], f"save flow {new_name!r}")
    if not created:
        raise FlowError(f"a flow named {new_name!r} already exists; choose another name")
    copy = _parse(new_name, record)
    assert copy is not None
    return copy
