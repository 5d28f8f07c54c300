"""Processor specs and the functions registered to them.

A :class:`Processor` is an immutable spec: a name, named inputs and outputs,
whether it waits for its inputs to complete (``wait``), and its backpressure
limit.  Decorating a function with a processor registers that function as the
processor's implementation *in this process*; other services may implement
other processors of the same flow.

Parameters of the function named like an input receive an :class:`~datagraph.IO`;
every other parameter is resolved by FastAPI-style dependency injection
(fast-depends): ``Annotated[T, Depends(fn)]`` or ``x: T = Depends(fn)``.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from fast_depends import Provider
from fast_depends.core import build_call_model
from fast_depends.dependencies import Dependant

from .exceptions import DependencyError, ProcessorError

__all__ = ["Implementation", "Processor", "registry"]

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ProcessorError(f"{kind} name must be a non-empty string, got {name!r}")
    bad = sorted(set(name) - _NAME_CHARS)
    if bad:
        raise ProcessorError(
            f"{kind} name {name!r} contains {''.join(bad)!r}; use letters, digits and _ - . : only"
        )
    return name


def _names(kind: str, owner: str, values: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ProcessorError(
            f"processor {owner!r}: {kind} must be an iterable of names, got the string "
            f"{values!r}; write [{values!r}]"
        )
    names = tuple(_check_name(kind[:-1], v) for v in values)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProcessorError(f"processor {owner!r} lists {kind[:-1]} {dupes[0]!r} twice")
    # Sets have no order; sort them so specs compare and serialise stably.
    if isinstance(values, set | frozenset):
        names = tuple(sorted(names))
    return names


@dataclass(frozen=True, eq=False)
class Processor:
    """A processor spec: ``Processor(name="enrich", inputs=["users"], outputs=["rows"])``.

    Call it on a function to register the implementation in this process.
    """

    name: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    wait: bool = False
    max_backlog: int | None = None
    description: str = ""
    _impl: Implementation | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(
        self,
        name: str,
        inputs: Iterable[str] = (),
        outputs: Iterable[str] = (),
        *,
        wait: bool = False,
        max_backlog: int | None = None,
        description: str = "",
    ) -> None:
        set_ = object.__setattr__
        set_(self, "name", _check_name("processor", name))
        set_(self, "inputs", _names("inputs", name, inputs))
        set_(self, "outputs", _names("outputs", name, outputs))
        both = sorted(set(self.inputs) & set(self.outputs))
        if both:
            raise ProcessorError(f"processor {name!r} both reads and writes {both[0]!r}")
        if max_backlog is not None and (not isinstance(max_backlog, int) or max_backlog <= 0):
            raise ProcessorError(f"processor {name!r}: max_backlog must be a positive int")
        set_(self, "wait", bool(wait))
        set_(self, "max_backlog", max_backlog)
        set_(self, "description", description)
        set_(self, "_impl", None)

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``func`` as this processor's implementation in this process."""
        caller = sys._getframe(1)
        impl = Implementation.build(self, func, localns=dict(caller.f_locals))
        object.__setattr__(self, "_impl", impl)
        registry.add(self)
        return func

    @property
    def implementation(self) -> Implementation | None:
        """The function registered in this process, if any."""
        return self._impl

    def spec(self) -> dict[str, Any]:
        """The spec as plain data (what a run plan and a registration carry)."""
        return {
            "name": self.name,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "wait": self.wait,
            "max_backlog": self.max_backlog,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Processor:
        return cls(
            spec["name"],
            spec.get("inputs", ()),
            spec.get("outputs", ()),
            wait=spec.get("wait", False),
            max_backlog=spec.get("max_backlog"),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Processor):
            return NotImplemented
        return self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash((self.name, self.inputs, self.outputs, self.wait))


class _Registry:
    """Processors implemented in this process, by name."""

    def __init__(self) -> None:
        self._by_name: dict[str, Processor] = {}
        self.listeners: list[Callable[[Processor], None]] = []

    def add(self, processor: Processor) -> None:
        self._by_name[processor.name] = processor
        for listener in self.listeners:
            listener(processor)

    def get(self, name: str) -> Processor | None:
        return self._by_name.get(name)

    def implementation(self, processor: Processor) -> Implementation | None:
        """The function implementing ``processor`` in this process: its own, or that of
        the registered processor with the same spec (a spec declared apart from it)."""
        if processor.implementation is not None:
            return processor.implementation
        local = self._by_name.get(processor.name)
        return local.implementation if local is not None and local == processor else None

    def remove(self, name: str) -> None:
        self._by_name.pop(name, None)

    def all(self) -> list[Processor]:
        return list(self._by_name.values())


registry = _Registry()


class Kind:
    ASYNC_GEN = "async generator"
    COROUTINE = "coroutine"
    SYNC_GEN = "generator"
    SYNC = "function"


@dataclass(frozen=True, eq=False)
class Implementation:
    """A function registered to a processor, with its dependency model built once."""

    processor: Processor
    func: Callable[..., Any]
    kind: str
    io_params: tuple[str, ...]
    hints: dict[str, Any]
    _model: Any
    _provider: Provider
    #: Every parameter is an input and nothing is injected: ``resolve`` has nothing to solve.
    _plain: bool = False

    @classmethod
    def build(
        cls, processor: Processor, func: Callable[..., Any], *, localns: dict[str, Any] | None = None
    ) -> Implementation:
        if not callable(func):
            raise ProcessorError(f"processor {processor.name!r} must decorate a function, got {func!r}")
        if inspect.isasyncgenfunction(func):
            kind = Kind.ASYNC_GEN
        elif inspect.iscoroutinefunction(func):
            kind = Kind.COROUTINE
        elif inspect.isgeneratorfunction(func):
            kind = Kind.SYNC_GEN
        else:
            kind = Kind.SYNC
        try:
            hints = typing.get_type_hints(func, localns=localns, include_extras=True)
        except Exception as exc:
            raise ProcessorError(
                f"processor {processor.name!r}: cannot read the annotations of {func.__qualname__}: {exc}"
            ) from exc
        signature = inspect.signature(func)
        params = signature.parameters
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [name for name in processor.inputs if name not in params]
        if missing and not var_kw:
            raise DependencyError(
                f"processor {processor.name!r} reads {missing[0]!r} but "
                f"{func.__qualname__}() has no parameter named {missing[0]!r}; "
                "add one (e.g. `" + missing[0] + ": IO[int]`)"
            )
        io_params = tuple(n for n in processor.inputs if n in params or var_kw)
        resolved: list[inspect.Parameter] = []
        for name, param in params.items():
            if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            annotation = hints.get(name, param.annotation)
            if name in processor.inputs:
                resolved.append(param.replace(annotation=Any))
                continue
            if not _is_dependency(annotation, param.default) and param.default is inspect.Parameter.empty:
                raise DependencyError(
                    f"processor {processor.name!r}: parameter {name!r} of {func.__qualname__}() "
                    f"is neither one of its inputs {list(processor.inputs)} nor a dependency; "
                    f"declare it as an input or write `{name}: Annotated[T, Depends(provider)]`"
                )
            resolved.append(param.replace(annotation=annotation))

        async def collect(**kwargs: Any) -> dict[str, Any]:
            return kwargs

        collect.__signature__ = inspect.Signature(resolved)  # type: ignore[attr-defined]
        provider = Provider()
        try:
            model = build_call_model(
                call=collect, dependency_provider=provider, serializer_cls=None, serialize_result=False
            )
        except Exception as exc:
            raise DependencyError(
                f"processor {processor.name!r}: cannot build the dependencies of {func.__qualname__}(): {exc}"
            ) from exc
        plain = (
            not model.dependencies
            and not model.extra_dependencies
            and not model.custom_fields
            and all(param.name in io_params for param in resolved)
        )
        return cls(processor, func, kind, io_params, hints, model, provider, plain)

    async def resolve(self, stack: AsyncExitStack, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Resolve dependencies; generator dependencies are cleaned up by ``stack``."""
        kwargs = {name: inputs[name] for name in self.io_params}
        if self._plain:
            return kwargs  # what solving would return, without building it per call
        result: dict[str, Any] = await self._model.asolve(
            stack=stack, cache_dependencies={}, nested=False, **kwargs
        )
        # Inputs taken through **kwargs are not in the dependency model's signature.
        for name in self.io_params:
            result.setdefault(name, kwargs[name])
        return result

    def output_types(self) -> dict[str, Any]:
        """Value types of the outputs, from ``AsyncIterator[IOVal[T]]`` or ``[IOBatch[T]]``; else Any."""
        ret = self.hints.get("return")
        value_type: Any = Any
        for arg in get_args(ret):
            if getattr(get_origin(arg) or arg, "__name__", "") in ("IOVal", "IOBatch") and get_args(arg):
                value_type = get_args(arg)[0]
        return {name: value_type for name in self.processor.outputs}

    def input_types(self) -> dict[str, Any]:
        """Value types of the inputs, read from ``IO[T]`` annotations; Any when unknown."""
        types: dict[str, Any] = {}
        for name in self.processor.inputs:
            hint = self.hints.get(name)
            args = get_args(hint) if hint is not None else ()
            types[name] = args[0] if args else Any
        return types


def _is_dependency(annotation: Any, default: Any) -> bool:
    if isinstance(default, Dependant):
        return True
    if get_origin(annotation) is typing.Annotated:
        return any(isinstance(m, Dependant) for m in annotation.__metadata__)
    return False
