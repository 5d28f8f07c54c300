"""Running a finished run again: kept inputs, lineage, and the runs that cannot be."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from datagraph import Flow, IOVal, LocalExecutor, Supervisor
from datagraph.exceptions import RerunError, RunError
from datagraph.rerun import kept_inputs, rerun, rerun_info
from tests.web_support import web_double, web_slow, web_source

pytestmark = pytest.mark.anyio

FLOW = Flow.from_processors(web_source, web_double, name="rerun flow").resolve()


async def _finished_run(supervisor: Supervisor, count: int) -> str:
    outputs = await supervisor.start_flow(FLOW, inputs=[IOVal(name="web_count", value=count)])
    run_id = outputs["web_doubled"].run_id
    assert await supervisor.wait(run_id, timeout=20) == "succeeded"
    return run_id


async def _outputs(supervisor: Supervisor, run_id: str) -> list[int]:
    from datagraph import IO

    return [v async for v in IO(supervisor, run_id, "web_doubled").stream()]


async def test_a_rerun_has_the_same_flow_and_inputs_and_knows_its_origin(supervisor: Supervisor) -> None:
    origin = await _finished_run(supervisor, 4)
    plan, given = await kept_inputs(supervisor, origin)
    assert given == {"web_count": [4]} and plan.flow["name"] == "rerun flow"

    first = await supervisor.rerun(origin)
    second = await rerun(supervisor, origin)
    assert first != origin and second != first
    assert await supervisor.wait(first, timeout=20) == "succeeded"
    assert await _outputs(supervisor, first) == [0, 2, 4, 6]

    info = await rerun_info(supervisor, origin)
    assert info is not None and info.can_rerun and info.rerun_of is None
    assert info.reruns == (first, second)  # oldest first
    child = await rerun_info(supervisor, first)
    assert child is not None and child.rerun_of == origin and child.inputs_kept

    edited = await rerun(supervisor, origin, inputs={"web_count": [2]})
    assert await supervisor.wait(edited, timeout=20) == "succeeded"
    assert await _outputs(supervisor, edited) == [0, 2]
    assert await rerun_info(supervisor, "no-such-run") is None
    with pytest.raises(RunError, match="unknown"):
        await rerun(supervisor, "no-such-run")


async def test_a_running_run_cannot_be_run_again(supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_slow, name="rerun slow").resolve()
    outputs = await supervisor.start_flow(flow, inputs=[IOVal(name="web_slow_n", value=100_000)])
    run_id = outputs["web_slow_out"].run_id
    try:
        info = await rerun_info(supervisor, run_id)
        assert info is not None and info.inputs_kept and not info.can_rerun
        with pytest.raises(RerunError, match="still running; wait for it to end"):
            await rerun(supervisor, run_id)
    finally:
        await supervisor.cancel(run_id)
    assert (await rerun_info(supervisor, run_id)).can_rerun  # type: ignore[union-attr]


@pytest.fixture
async def small_supervisor(valkey_url: str, anyio_backend: str) -> AsyncIterator[Supervisor]:
    Supervisor.detach()
    supervisor = Supervisor.attach(
        redis_config={"url": valkey_url}, executor=LocalExecutor(), secret=b"test-secret",
        rerun_inputs_max_bytes=64,
    )
    try:
        yield supervisor
    finally:
        await Supervisor.adetach()


async def test_a_run_whose_inputs_were_too_large_says_so(small_supervisor: Supervisor) -> None:
    flow = Flow.from_processors(web_source, name="rerun large").resolve()
    outputs = await small_supervisor.start_flow(
        flow, inputs=[IOVal(name="web_count", value=n) for n in [1] * 100]
    )
    run_id = outputs["web_numbers"].run_id
    await small_supervisor.wait(run_id, timeout=20)
    info = await rerun_info(small_supervisor, run_id)
    assert info is not None and info.finished and not info.inputs_kept and not info.can_rerun
    assert info.omitted is not None and "more than the 64 kept" in info.omitted
    with pytest.raises(RerunError, match="rerun_inputs_max_bytes"):
        await rerun(small_supervisor, run_id)
    # Edited inputs still run it again.
    again = await rerun(small_supervisor, run_id, inputs={"web_count": [1]})
    assert await small_supervisor.wait(again, timeout=20) == "succeeded"
