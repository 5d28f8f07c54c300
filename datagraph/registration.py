"""Registrations: each process publishes the processors it implements.

A registration is what another service, the CLI or the dashboard needs to
know about a processor without importing its code: its inputs and outputs
with their value types (as text, and as JSON Schema from pydantic's
``TypeAdapter``; ``Any`` when the annotations say nothing), ``wait``,
``max_backlog``, docstring and module.  It is stored as JSON in the
``PROCESSORS`` hash; which workers implement it lives in ``IMPLEMENTERS``
(one field per processor and worker), so several services implementing the
same processor never overwrite each other.

Publishing happens once per event loop, when the supervisor creates its
runtime (a ``Supervisor.runtime_hooks`` hook installed by importing this
module, which ``datagraph`` does), and again whenever a processor is
decorated on a loop that already has a runtime.  A processor decorated
elsewhere (another thread, no loop) is published with the next runtime, or
by calling :func:`publish_registrations`.  Nothing is published when the
``telemetry`` setting is off; a store failure while publishing is logged,
never raised: registrations must not stop work.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
import types
import typing
import warnings
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, get_args, get_origin

import sniffio
from glide import GlideError as GlideBaseError

from ._backend import current_loop
from .exceptions import ConfigError, StoreError
from .processor import Implementation, Processor, registry
from .store import keys
from .store.client import exec_batch, new_batch
from .supervisor import Supervisor
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["describe_type", "publish_registrations", "registration", "type_schema"]

log = logging.getLogger("datagraph.telemetry")


def describe_type(tp: Any) -> str:
    """A short, readable text for a type annotation: ``list[int]``, ``User | None``."""
    if tp is Any:
        return "Any"
    if tp is None or tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, list):
        return "[" + ", ".join(describe_type(t) for t in tp) + "]"
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return describe_type(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(describe_type(a) for a in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin is not None:
        name = getattr(origin, "__qualname__", None) or repr(origin).replace("typing.", "")
        if not args:
            return str(name)
        return f"{name}[{', '.join(describe_type(a) for a in args)}]"
    if isinstance(tp, typing.TypeVar):
        return tp.__name__
    if isinstance(tp, type):
        return tp.__qualname__
    if isinstance(tp, str):
        return tp
    return repr(tp).replace("typing.", "")


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of a value type; ``{}`` (anything) when pydantic cannot describe it."""
    if tp is Any:
        return {}
    from pydantic import TypeAdapter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            schema: dict[str, Any] = TypeAdapter(tp).json_schema()
    except Exception:  # arbitrary classes, callables, unresolved names: pydantic says no
        return {}
    return schema


def _ports(types_by_name: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": name, "type": describe_type(tp), "schema": type_schema(tp)}
        for name, tp in types_by_name.items()
    ]


#: Records already built, per implementation (building JSON Schemas is not free).
_records: weakref.WeakKeyDictionary[Implementation, dict[str, Any]] = weakref.WeakKeyDictionary()


def registration(processor: Processor) -> dict[str, Any]:
    """The registration record of a processor implemented in this process (plain JSON data)."""
    impl = processor.implementation
    if impl is None:
        raise ValueError(f"processor {processor.name!r} has no implementation in this process")
    record = _records.get(impl)
    if record is None:
        record = _records[impl] = _build(processor, impl)
    return dict(record)


def _build(processor: Processor, impl: Implementation) -> dict[str, Any]:
    func = impl.func
    return {
        "name": processor.name,
        "inputs": _ports(impl.input_types()),
        "outputs": _ports(impl.output_types()),
        "wait": processor.wait,
        "max_backlog": processor.max_backlog,
        "description": processor.description,
        "doc": inspect.getdoc(func) or "",
        "module": getattr(func, "__module__", None) or "",
        "function": getattr(func, "__qualname__", None) or repr(func),
        "kind": impl.kind,
    }


async def publish_registrations(
    supervisor: Supervisor, processors: Iterable[Processor] | None = None
) -> None:
    """Publish ``processors`` (default: every one implemented here) as implemented by this worker.

    Raises :class:`StoreError` when the store refuses; the automatic
    publishing around it logs instead.
    """
    runtime = await supervisor.runtime()
    await _publish(runtime, registry.all() if processors is None else processors)


async def _publish(runtime: Runtime, processors: Iterable[Processor]) -> None:
    records = [registration(p) for p in processors if p.implementation is not None]
    if not records:
        return
    now = repr(time.time())
    fields: list[str] = []
    implementers: list[str] = []
    for record in records:
        record["updated"] = float(now)
        record["worker"] = runtime.worker_id
        fields += [record["name"], json.dumps(record, separators=(",", ":"))]
        implementers += [keys.implementer_field(record["name"], runtime.worker_id), now]
    batch = new_batch(runtime.client)
    batch.custom_command(["HSET", keys.PROCESSORS, *fields])
    batch.custom_command(["HSET", keys.IMPLEMENTERS, *implementers])
    try:
        await exec_batch(runtime.client, batch, raise_on_error=True)
    except GlideBaseError as exc:
        raise StoreError(f"could not publish processor registrations: {exc}") from exc


async def _publish_quietly(runtime: Runtime, processors: Iterable[Processor]) -> None:
    try:
        await _publish(runtime, processors)
    except (StoreError, ValueError) as exc:
        log.warning("could not publish processor registrations: %s", exc)


# -- automatic publishing ----------------------------------------------------

#: Event loop -> (supervisor, runtime) that published on it, both held weakly.
_published: weakref.WeakKeyDictionary[
    object, tuple[weakref.ref[Supervisor], weakref.ref[Runtime]]
] = weakref.WeakKeyDictionary()


async def _on_runtime(supervisor: Supervisor, runtime: Runtime) -> None:
    """Runtime hook: publish everything implemented here, then purge stale workers."""
    if not runtime.settings.telemetry:
        return
    _published[current_loop()] = (weakref.ref(supervisor), weakref.ref(runtime))
    await _publish_quietly(runtime, registry.all())
    try:
        await Telemetry(runtime.client, runtime.settings).purge()
    except StoreError as exc:
        log.warning("could not purge offline workers: %s", exc)


def _on_register(processor: Processor) -> None:
    """Registry listener: publish a processor decorated after the runtime exists."""
    try:
        loop = current_loop()
    except sniffio.AsyncLibraryNotFoundError:
        return  # not on a loop: the next runtime publishes it
    entry = _published.get(loop)
    if entry is None:
        return
    supervisor, runtime = entry[0](), entry[1]()
    if supervisor is None or runtime is None or not _is_attached(supervisor):
        return
    # RuntimeError: the loop's host has ended, and the next runtime publishes it.
    with contextlib.suppress(RuntimeError):
        runtime.host.start_soon(
            _publish_quietly, runtime, [processor], name=f"datagraph-register-{processor.name}"
        )


def _is_attached(supervisor: Supervisor) -> bool:
    try:
        return Supervisor.instance is supervisor
    except ConfigError:
        return False


if _on_runtime not in Supervisor.runtime_hooks:
    Supervisor.runtime_hooks.append(_on_runtime)
if _on_register not in registry.listeners:
    registry.listeners.append(_on_register)
