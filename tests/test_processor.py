from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import pytest

from datagraph import IO, Depends, IOVal, Processor
from datagraph.exceptions import DependencyError, ProcessorError
from datagraph.processor import registry


def test_inputs_and_outputs_accept_any_iterable() -> None:
    p = Processor(name="p", inputs={"b", "a"}, outputs=("c",))
    assert p.inputs == ("a", "b")
    assert p.outputs == ("c",)


def test_a_string_instead_of_a_list_is_a_clear_error() -> None:
    with pytest.raises(ProcessorError, match=r"write \['foo'\]"):
        Processor(name="p", inputs="foo", outputs=[])


def test_bad_names_are_rejected() -> None:
    with pytest.raises(ProcessorError, match="contains"):
        Processor(name="has space", inputs=[], outputs=[])
    with pytest.raises(ProcessorError, match="both reads and writes 'x'"):
        Processor(name="p", inputs=["x"], outputs=["x"])


def test_decorating_registers_the_implementation() -> None:
    p = Processor(name="reg_test", inputs=["a"], outputs=["b"])

    @p
    async def impl(a: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("b", 1)

    assert registry.get("reg_test") is p
    assert p.implementation is not None
    assert p.implementation.func is impl
    assert p.implementation.input_types() == {"a": int}
    assert p.implementation.output_types() == {"b": int}


def test_parameter_neither_input_nor_dependency_is_named() -> None:
    p = Processor(name="bad_param", inputs=["a"], outputs=["b"])
    with pytest.raises(DependencyError, match="parameter 'mystery'"):

        @p
        async def impl(a: IO[int], mystery: int) -> AsyncIterator[IOVal[int]]:
            yield IOVal("b", mystery)


def test_missing_input_parameter_is_named() -> None:
    p = Processor(name="no_param", inputs=["a", "b"], outputs=["c"])
    with pytest.raises(DependencyError, match="reads 'b'"):

        @p
        async def impl(a: IO[int]) -> AsyncIterator[IOVal[int]]:
            yield IOVal("c", 1)


def test_dependencies_in_both_spellings_are_accepted() -> None:
    def two() -> int:
        return 2

    p = Processor(name="deps_ok", inputs=["a"], outputs=["b"])

    @p
    async def impl(
        a: IO[int], x: Annotated[int, Depends(two)], y: int = Depends(two)
    ) -> AsyncIterator[IOVal[int]]:
        yield IOVal("b", x + y)

    assert p.implementation is not None


@pytest.mark.anyio
async def test_a_processor_that_only_reads_inputs_resolves_to_them_without_solving() -> None:
    """Nothing to inject: resolve() hands over the inputs, as solving them would."""
    from contextlib import AsyncExitStack

    def two() -> int:
        return 2

    plain = Processor(name="plain_inputs", inputs=["a", "b"], outputs=["c"])
    injected = Processor(name="injected_inputs", inputs=["a", "b"], outputs=["c"])

    @plain
    async def _plain(a: IO[int], b: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("c", 1)

    @injected
    async def _injected(a: IO[int], b: IO[int], x: int = Depends(two)) -> AsyncIterator[IOVal[int]]:
        yield IOVal("c", x)

    assert plain.implementation is not None and injected.implementation is not None
    assert plain.implementation._plain and not injected.implementation._plain
    inputs = {"a": "io-a", "b": "io-b"}
    async with AsyncExitStack() as stack:
        assert await plain.implementation.resolve(stack, inputs) == inputs
        assert await injected.implementation.resolve(stack, inputs) == {**inputs, "x": 2}
        solved = await plain.implementation._model.asolve(stack=stack, cache_dependencies={}, **inputs)
        assert solved == inputs
