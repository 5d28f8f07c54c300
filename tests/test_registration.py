"""Processor registrations: type text, JSON Schema, publishing from worker processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Optional

import pytest
from pydantic import BaseModel
from telemetry_worker import Worker, start_worker, wait_for

from datagraph import IO, IOVal, LocalExecutor, Processor, Supervisor
from datagraph.registration import describe_type, publish_registrations, registration, type_schema
from datagraph.telemetry import ProcessorInfo, Telemetry


class Point(BaseModel):
    x: int
    y: int


class Opaque:
    """Pydantic cannot describe this class."""


@pytest.mark.parametrize(
    ("annotation", "text"),
    [
        (int, "int"),
        (Any, "Any"),
        (list[int], "list[int]"),
        (dict[str, list[float]], "dict[str, list[float]]"),
        (Optional[Point], "Point | None"),  # noqa: UP045 (the typing spelling is the point)
        (Point | None, "Point | None"),
        (tuple[int, ...], "tuple[int, ...]"),
        (type(None), "None"),
    ],
)
def test_describe_type(annotation: Any, text: str) -> None:
    assert describe_type(annotation) == text


def test_type_schema() -> None:
    assert type_schema(int) == {"type": "integer"}
    assert type_schema(Any) == {}
    assert type_schema(list[str]) == {"type": "array", "items": {"type": "string"}}
    point = type_schema(Point)
    assert point["properties"] == {"x": {"title": "X", "type": "integer"},
                                   "y": {"title": "Y", "type": "integer"}}
    assert type_schema(Opaque) == {}


def test_registration_reads_the_annotations() -> None:
    move = Processor("reg_move", ["points", "step"], ["moved"], max_backlog=7)

    @move
    async def _move(points: IO[Point], step: IO[int]) -> AsyncIterator[IOVal[list[Point]]]:
        """Moves every point by step."""
        yield IOVal("moved", [])

    record = registration(move)
    assert record["name"] == "reg_move"
    assert [(p["name"], p["type"]) for p in record["inputs"]] == [("points", "Point"), ("step", "int")]
    assert record["inputs"][1]["schema"] == {"type": "integer"}
    assert record["inputs"][0]["schema"]["properties"]["x"] == {"title": "X", "type": "integer"}
    assert record["outputs"][0]["type"] == "list[Point]"
    assert record["outputs"][0]["schema"]["type"] == "array"
    assert record["max_backlog"] == 7
    assert record["wait"] is False
    assert record["doc"] == "Moves every point by step."
    assert record["module"] == __name__
    assert record["kind"] == "async generator"


def test_registration_without_annotations_says_any() -> None:
    loose = Processor("reg_loose", ["a"], ["b"])

    @loose
    def _loose(a):  # type: ignore[no-untyped-def]
        return None

    record = registration(loose)
    assert record["inputs"] == [{"name": "a", "type": "Any", "schema": {}}]
    assert record["outputs"] == [{"name": "b", "type": "Any", "schema": {}}]
    assert record["kind"] == "function"


def test_registration_needs_an_implementation() -> None:
    with pytest.raises(ValueError, match="reg_nowhere"):
        registration(Processor("reg_nowhere", ["a"], ["b"]))


# -- published by worker processes --------------------------------------------------


@pytest.fixture(scope="module")
def worker(valkey_url: str) -> Iterator[Worker]:
    with start_worker(valkey_url) as worker:
        yield worker


def _by_name(infos: list[ProcessorInfo]) -> dict[str, ProcessorInfo]:
    return {info.name: info for info in infos}


@pytest.mark.anyio
async def test_worker_process_registrations_appear(valkey_url: str, worker: Worker) -> None:
    async with await Telemetry.connect(valkey_url) as telemetry:
        infos = _by_name(await telemetry.processors())
    source, label, total, untyped = (
        infos[n] for n in ("tw_source", "tw_label", "tw_total", "tw_untyped")
    )
    for info in (source, label, total, untyped):
        assert worker.id in info.workers
    assert source.port("tw_n").type == "int"
    assert source.port("tw_n").schema == {"type": "integer"}
    assert source.port("tw_numbers").type == "int"
    assert source.doc == "Counts from 0 to n - 1."
    assert source.module == "__main__"
    assert source.function.endswith("_source")
    assert label.description == "Labels numbers."
    assert label.port("tw_labels").type == "Label"
    assert label.port("tw_labels").schema["properties"]["text"] == {"title": "Text", "type": "string"}
    assert total.wait is True
    assert total.max_backlog == 50
    assert total.port("tw_labels").type == "Label"
    assert total.port("tw_total").type == "dict[str, int]"
    assert total.port("tw_total").schema == {
        "type": "object", "additionalProperties": {"type": "integer"}
    }
    assert total.to_processor() == Processor(
        "tw_total", ["tw_labels"], ["tw_total"], wait=True, max_backlog=50
    )
    assert untyped.port("tw_anything").type == "Any"
    assert untyped.port("tw_anything").schema == {}
    assert untyped.updated is not None


@pytest.mark.anyio
async def test_workers_implementing_one_processor_are_merged(
    supervisor: Supervisor, worker: Worker
) -> None:
    # This process implements tw_source too; both workers are listed.
    tw_source = Processor("tw_source", ["tw_n"], ["tw_numbers"])

    @tw_source
    async def _source(tw_n: IO[int]) -> AsyncIterator[IOVal[int]]:
        yield IOVal("tw_numbers", await tw_n.first())

    await publish_registrations(supervisor, [tw_source])
    telemetry = await Telemetry.from_supervisor(supervisor)
    info = await telemetry.processor("tw_source")
    assert info is not None
    assert {worker.id, supervisor.worker_id} <= set(info.workers)
    assert info.port("tw_n").type == "int"


@pytest.mark.anyio
async def test_runtime_publishes_what_this_process_implements(supervisor: Supervisor) -> None:
    early = Processor("reg_early", ["x"], ["y"])

    @early
    async def _early(x: IO[str]) -> AsyncIterator[IOVal[str]]:
        yield IOVal("y", await x.first())

    telemetry = await Telemetry.from_supervisor(supervisor)  # creates the runtime
    info = await telemetry.processor("reg_early")
    assert info is not None
    assert supervisor.worker_id in info.workers
    assert info.port("x").type == "str"


@pytest.mark.anyio
async def test_processor_registered_later_is_published(supervisor: Supervisor) -> None:
    telemetry = await Telemetry.from_supervisor(supervisor)
    late = Processor("reg_late", ["x"], ["y"])

    @late
    async def _late(x: IO[float]) -> AsyncIterator[IOVal[float]]:
        yield IOVal("y", await x.first())

    async def published() -> ProcessorInfo | None:
        info = await telemetry.processor("reg_late")
        return info if info is not None and supervisor.worker_id in info.workers else None

    info = await wait_for(published, within=5)
    assert info.port("x").schema == {"type": "number"}


@pytest.mark.anyio
async def test_nothing_is_published_with_telemetry_off(valkey_url: str) -> None:
    Supervisor.detach()
    quiet = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"s", telemetry=False
    )
    try:
        hidden = Processor("reg_hidden", ["x"], ["y"])

        @hidden
        async def _hidden(x: IO[int]) -> AsyncIterator[IOVal[int]]:
            yield IOVal("y", await x.first())

        telemetry = await Telemetry.from_supervisor(quiet)
        infos = _by_name(await telemetry.processors())
        assert quiet.worker_id not in infos.get("reg_hidden", _nobody()).workers
    finally:
        await Supervisor.adetach()


def _nobody() -> ProcessorInfo:
    return ProcessorInfo(
        name="", inputs=(), outputs=(), wait=False, max_backlog=None, description="", doc="",
        module="", function="", kind="", workers=(), online_workers=(), online=False, updated=None,
    )
