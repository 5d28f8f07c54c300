"""The executors scenario's pipeline: four stages, each with a fixed amount of Python work per value.

A module of its own, importable from the checkout: ProcessExecutor's workers
import it to find the implementations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from datagraph import IO, Flow, IOVal, Processor

__all__ = ["STAGES", "spin"]


def spin(value: int, rounds: int) -> int:
    """Pure-Python work: ``rounds`` multiply-add-modulo steps (a parser's or a scorer's kind)."""
    acc = value
    for j in range(rounds):
        acc = (acc * 31 + j) % 1_000_003
    return acc


first = Processor("exec-stage-1", ["job"], ["s1"])
second = Processor("exec-stage-2", ["s1"], ["s2"])
third = Processor("exec-stage-3", ["s2"], ["s3"])
fourth = Processor("exec-stage-4", ["s3"], ["out"])


@first
async def _first(job: IO[tuple[int, int]]) -> AsyncIterator[IOVal[tuple[int, int]]]:
    n, rounds = await job.first()
    for i in range(n):
        yield IOVal("s1", (spin(i, rounds), rounds))


@second
async def _second(s1: IO[tuple[int, int]]) -> AsyncIterator[IOVal[tuple[int, int]]]:
    async for value, rounds in s1:
        yield IOVal("s2", (spin(value, rounds), rounds))


@third
async def _third(s2: IO[tuple[int, int]]) -> AsyncIterator[IOVal[tuple[int, int]]]:
    async for value, rounds in s2:
        yield IOVal("s3", (spin(value, rounds), rounds))


@fourth
async def _fourth(s3: IO[tuple[int, int]]) -> AsyncIterator[IOVal[int]]:
    async for value, rounds in s3:
        yield IOVal("out", spin(value, rounds))


#: job (n, rounds) -> four stages -> out
STAGES = Flow.from_processors(first, second, third, fourth, name="four-stages").resolve()
