"""Retry policies and exactly-once delivery to the caller (``datagraph.retries``), in process.

A processor here fails on purpose the first time (an exception type listed in
``retry_on``), after the caller has taken some of its values: the caller's
``stream()`` must go on with the next value of the new attempt.  Lost Celery
workers and warm shutdowns are in ``tests/test_celery_retries.py``.
"""

from __future__ import annotations

import io as io_module
import json
from collections.abc import AsyncIterator

import anyio
import pytest

from datagraph import IO, Flow, IOVal, Processor, Supervisor
from datagraph.cli import _print_status
from datagraph.exceptions import ConfigError, ProcessorFailed, RetryMismatchError, RunCancelled
from datagraph.retries import RetryPolicy, pending_retry
from datagraph.retries.attempts import _WATCHERS
from datagraph.snapshots import StatusSnapshot
from datagraph.store import keys
from datagraph.telemetry import Telemetry

pytestmark = pytest.mark.anyio

N = 50
#: Attempts each flaky processor has started, by test tag.
started: dict[str, int] = {}
#: Set by the test once it has taken the values delivered before the failure.
taken: dict[str, anyio.Event] = {}


class Flaky(Exception):
    """What the flaky processors raise (a cause listed in retry_on)."""


def flaky_processor(name: str, *, fail_times: int, shift: bool = False) -> Processor:
    """Yields range(job['n']); its first ``fail_times`` attempts raise Flaky after 10 values.

    ``shift``: a retried attempt yields different values (a non-deterministic processor).
    """
    spec = Processor(name, [f"{name}_job"], [f"{name}_out"])

    @spec
    async def _run(**inputs: IO[dict[str, object]]) -> AsyncIterator[IOVal[int]]:
        params = await inputs[f"{name}_job"].first()
        tag = str(params["tag"])
        attempt = started[tag] = started.get(tag, 0) + 1
        offset = 1000 if shift and attempt > 1 else 0
        for i in range(int(params["n"])):  # type: ignore[call-overload]
            if i == 10 and attempt <= fail_times:
                with anyio.fail_after(10):
                    await taken[tag].wait()  # the caller has the first 10 values
                raise Flaky(f"attempt {attempt} of {tag} gave up")
            yield IOVal(f"{name}_out", i + offset)

    return spec


async def _consume(out: IO[int], tag: str) -> list[int]:
    got: list[int] = []
    with anyio.fail_after(30):
        async for value in out.stream():
            got.append(value)
            if len(got) == 10:
                taken[tag].set()
    return got


def new_tag(name: str, anyio_backend: str, *, wait: bool = True) -> str:
    """A test's tag for the flaky processors; ``wait=False``: they fail without waiting for a reader."""
    tag = f"{name}-{anyio_backend}"
    started.pop(tag, None)
    taken[tag] = anyio.Event()
    if not wait:
        taken[tag].set()
    return tag



async def _record(supervisor: Supervisor, run_id: str) -> dict[str, str]:
    runtime = await supervisor.runtime()
    raw = await runtime.client.custom_command(["HGETALL", keys.run(run_id)])
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_a_retried_run_delivers_every_value_once_to_the_caller(
    supervisor: Supervisor, anyio_backend: str
) -> None:
    tag = new_tag("once", anyio_backend)
    proc = flaky_processor("r_once", fail_times=1)
    out = await supervisor.start_flow(
        Flow.from_processors(proc).resolve(), [IOVal("r_once_job", {"n": N, "tag": tag})],
        retries=1, retry_on=[Flaky],
    )
    io = out["r_once_out"]
    assert await _consume(io, tag) == list(range(N))
    assert started[tag] == 2
    assert await supervisor.wait(io.run_id, timeout=10) == "succeeded"
    record = await _record(supervisor, io.run_id)
    attempts = json.loads(record["attempts"])
    assert [a["number"] for a in attempts] == [1, 2]
    assert attempts[0]["cause"] == "Flaky" and "attempt 1" in attempts[0]["message"]
    assert attempts[1]["run_id"] == f"{io.run_id}.2" and attempts[1]["cause"] is None
    assert record["retried_by"] == f"{io.run_id}.2"
    # Reading again from the start: the whole sequence, from the last attempt.
    assert await io.collect() == list(range(N))

    # What the dashboard and `datagraph status` show.
    telemetry = await Telemetry.from_supervisor(supervisor)
    first, second = await telemetry.run_snapshots([io.run_id, f"{io.run_id}.2"])
    assert first is not None and second is not None
    assert [a.cause for a in first.attempts] == ["Flaky", None]
    assert first.state == "failed" and first.retrying  # replaced by attempt 2: no alert
    assert second.attempt == 2 and second.retry_of == io.run_id and not second.retrying
    out = io_module.StringIO()
    _print_status(StatusSnapshot(processors=(), workers=(), runs=(first, second)), out, detailed=False)
    text = out.getvalue()
    assert "attempts (2):" in text and f"attempt 2 of run {io.run_id}" in text
    assert "Flaky: attempt 1 of" in text and "(this attempt is retried" in text

    # The run view lists the attempts (the web stack is imported here only).
    from tests.web_support import open_dashboard, text_of

    async with open_dashboard(supervisor) as (_, client):
        page = await client.get(f"/runs/{io.run_id}")
        assert page.status_code == 200
        assert page.text.count('data-testid="run-attempt"') == 2
        assert 'data-testid="run-retrying"' in page.text and "Flaky" in text_of(page.text)
        later = await client.get(f"/runs/{io.run_id}.2")
        assert 'data-testid="run-retry-of"' in later.text


async def test_retries_from_the_flow_and_a_watcher_when_nobody_reads(
    supervisor: Supervisor, anyio_backend: str
) -> None:
    tag = new_tag("watched", anyio_backend)
    taken[tag].set()  # nobody reads: the processor fails as soon as it gets to value 10
    proc = flaky_processor("r_watched", fail_times=2)
    flow = Flow.from_processors(proc, retries=2, retry_on=["Flaky"]).resolve()
    out = await supervisor.start_flow(flow, [IOVal("r_watched_job", {"n": N, "tag": tag})])
    run_id = out["r_watched_out"].run_id
    assert await supervisor.wait(run_id, timeout=20) == "succeeded"
    assert started[tag] == 3
    assert [a["cause"] for a in json.loads((await _record(supervisor, run_id))["attempts"])] == [
        "Flaky", "Flaky", None,
    ]
    assert await out["r_watched_out"].collect() == list(range(N))


async def test_one_watcher_per_event_loop_retries_many_unread_runs(
    supervisor: Supervisor, anyio_backend: str
) -> None:
    tags = [new_tag(f"many{i}", anyio_backend, wait=False) for i in range(5)]
    proc = flaky_processor("r_many", fail_times=1)
    flow = Flow.from_processors(proc, retries=1, retry_on=["Flaky"]).resolve()
    outs = [await supervisor.start_flow(flow, [IOVal("r_many_job", {"n": N, "tag": t})]) for t in tags]
    runtime = await supervisor.runtime()
    watcher = _WATCHERS[runtime]
    assert len(watcher.runs) >= 5  # the five runs share the loop's one watcher
    for out, tag in zip(outs, tags, strict=True):
        assert await supervisor.wait(out["r_many_out"].run_id, timeout=30) == "succeeded"
        assert started[tag] == 2
        assert await out["r_many_out"].collect() == list(range(N))
    for _ in range(int(supervisor.settings.heartbeat_interval * 30) + 50):
        if _WATCHERS.get(runtime) is not watcher:
            break  # nothing left to follow: it ended
        await anyio.sleep(0.1)
    else:
        pytest.fail("the retries watcher still runs with no run left to follow")


async def test_a_processor_exception_not_listed_fails_at_once_naming_the_processor(
    supervisor: Supervisor, anyio_backend: str
) -> None:
    tag = new_tag("unlisted", anyio_backend)
    proc = flaky_processor("r_unlisted", fail_times=1)
    out = await supervisor.start_flow(
        Flow.from_processors(proc).resolve(), [IOVal("r_unlisted_job", {"n": N, "tag": tag})],
        retries=3,
    )
    with pytest.raises(ProcessorFailed, match="r_unlisted") as info:
        await _consume(out["r_unlisted_out"], tag)
    assert info.value.error_type == "Flaky"
    assert started[tag] == 1
    run_id = out["r_unlisted_out"].run_id
    assert await supervisor.wait(run_id, timeout=10) == "failed"
    record = await _record(supervisor, run_id)
    assert record["final"] == "1" and not pending_retry(record)


async def test_a_non_deterministic_retry_fails_rather_than_deliver_a_different_sequence(
    supervisor: Supervisor, anyio_backend: str
) -> None:
    tag = new_tag("shifty", anyio_backend)
    proc = flaky_processor("r_shifty", fail_times=1, shift=True)
    out = await supervisor.start_flow(
        Flow.from_processors(proc).resolve(), [IOVal("r_shifty_job", {"n": N, "tag": tag})],
        retries=1, retry_on=[Flaky],
    )
    got: list[int] = []
    with anyio.fail_after(30), pytest.raises(RetryMismatchError) as info:
        async for value in out["r_shifty_out"].stream():
            got.append(value)
            if len(got) == 10:
                taken[tag].set()
    assert got == list(range(10))  # nothing of the different sequence was delivered
    message = str(info.value)
    assert out["r_shifty_out"].run_id in message and "'r_shifty_out'" in message
    assert "deterministic" in message


async def test_retries_exhausted_raise_the_last_cause_with_the_attempts_listed(
    supervisor: Supervisor, anyio_backend: str
) -> None:
    tag = new_tag("exhausted", anyio_backend)
    proc = flaky_processor("r_exhausted", fail_times=5)
    out = await supervisor.start_flow(
        Flow.from_processors(proc).resolve(), [IOVal("r_exhausted_job", {"n": N, "tag": tag})],
        retries=2, retry_on=[Flaky],
    )
    got: list[int] = []
    with anyio.fail_after(30), pytest.raises(ProcessorFailed) as info:
        async for value in out["r_exhausted_out"].stream():
            got.append(value)
            taken[tag].set()
    assert got == list(range(10))
    assert started[tag] == 3
    error = info.value
    assert error.processor == "r_exhausted" and error.error_type == "Flaky"
    assert "attempt 3 of" in error.error_message  # the last cause
    assert "after 3 attempts" in str(error)
    assert [a.number for a in error.attempts] == [1, 2, 3]
    run_id = out["r_exhausted_out"].run_id
    assert await supervisor.wait(run_id, timeout=10) == "failed"


def test_a_retry_policy_names_the_bad_argument() -> None:
    with pytest.raises(ConfigError, match="retries must be"):
        RetryPolicy.build(retries=-1, retry_on=None)
    with pytest.raises(ConfigError, match="retry_on takes exception types"):
        RetryPolicy.build(retries=1, retry_on=[42])  # type: ignore[list-item]
    policy = RetryPolicy.build(retries=None, retry_on="TimeoutError, builtins.OSError")
    assert policy.retries == 0 and policy.retry_on == {"TimeoutError", "OSError"}
    assert policy.delay(1) == 0.5 and policy.delay(3) == 2.0


async def test_cancelling_a_retried_run_cancels_its_current_attempt(
    supervisor: Supervisor, anyio_backend: str
) -> None:
    tag = new_tag("cancelled", anyio_backend)
    proc = flaky_processor("r_cancelled", fail_times=1)
    out = await supervisor.start_flow(
        Flow.from_processors(proc).resolve(),
        [IOVal("r_cancelled_job", {"n": 200_000, "tag": tag})],
        retries=1, retry_on=[Flaky],
    )
    io = out["r_cancelled_out"]
    got: list[int] = []
    with anyio.fail_after(30), pytest.raises(RunCancelled):
        async for value in io.stream():
            got.append(value)
            if len(got) == 10:
                taken[tag].set()
            if len(got) == 20:  # attempt 2 is running
                assert await supervisor.cancel(io.run_id)
    assert got[:20] == list(range(20))
    assert await supervisor.wait(io.run_id, timeout=10) == "cancelled"
    assert await supervisor.run_state(f"{io.run_id}.2") == "cancelled"


def test_retries_come_from_the_settings_unless_the_flow_or_the_call_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datagraph.settings import Settings

    monkeypatch.setenv("DATAGRAPH_RETRIES", "3")
    monkeypatch.setenv("DATAGRAPH_RETRY_ON", "TimeoutError")
    settings = Settings.from_env()
    flow = Flow.from_processors(flaky_processor("r_settings", fail_times=0), retries=1, retry_on=[KeyError])
    assert RetryPolicy.build(retries=None, retry_on=None, settings=settings).retries == 3
    policy = RetryPolicy.build(retries=None, retry_on=None, flow=flow, settings=settings)
    assert policy.retries == 1 and policy.retry_on == {"TimeoutError", "KeyError"}
    assert RetryPolicy.build(retries=0, retry_on=None, flow=flow, settings=settings).retries == 0
    with pytest.raises(ConfigError, match="'retries' must not be negative"):
        Settings.from_env(retries=-1)


def test_which_failed_attempts_wait_for_a_retry() -> None:
    lost = json.dumps({"processor": "p", "type": "WorkerLost"})
    raised = json.dumps({"processor": "p", "type": "ValueError"})
    base = {"state": "failed", "retries": "2", "attempt": "1", "retry_on": "[]", "error": lost}
    assert pending_retry(base)
    assert not pending_retry({**base, "attempt": "3"})  # the last attempt: it alerts
    assert not pending_retry({**base, "final": "1"})
    assert not pending_retry({**base, "error": raised})
    assert pending_retry({**base, "error": raised, "retry_on": '["ValueError"]'})
    assert not pending_retry({"state": "failed", "error": lost})  # no policy
    # Cancelled by the retries themselves (a reader gave up on it): followed, not an end.
    assert pending_retry({"state": "cancelled", "stopped_for_retry": "1"})
    assert not pending_retry({"state": "cancelled", "retries": "2"})  # cancelled by someone
    assert pending_retry({"state": "cancelled", "retried_by": "x.2"})
