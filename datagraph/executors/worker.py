"""What every executor shares: recording a dispatch, and running a dispatched processor.

An executor moves "processor X of run R" from the process that starts the
run to a process that implements X.  The two ends are these functions:

* :func:`record_dispatch`, on the caller's side, in ``Executor.dispatch``
  before the processor is handed over: the processor shows as *dispatched*,
  and a watchdog fails it, naming it, if no worker starts it within
  ``dispatch_timeout``;
* :func:`run_dispatched`, on the worker's side: the one call a worker makes to
  run a processor of a run, in any event loop of a process whose supervisor
  is attached to the same store (with the same secret).  It reads the run's
  plan from the store, advertises the processor in this worker's heartbeat
  while it runs, stops it if the run fails or is cancelled elsewhere, and
  records how it ended.  It returns when the processor has ended, and raises
  only if it is itself cancelled: a processor's failure is written to the run.

``docs/executors.md`` describes the protocol with a worked example.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from .. import context, liveness
from ..exceptions import DispatchError, RunError, StoreError
from ..plan import Plan
from ..processor import registry
from ..runner import end_unstarted, run_processor
from ..store import keys
from ..store.scripts import TERMINAL
from ..streams import failure_error, run_error

if TYPE_CHECKING:
    from ..context import Context
    from ..runtime import Runtime

__all__ = ["fail_dispatch", "record_dispatch", "run_dispatched"]

log = logging.getLogger("datagraph.executors")


# -- caller side -------------------------------------------------------------------


async def record_dispatch(supervisor: Context, plan: Plan, name: str) -> None:
    """Record processor ``name`` of ``plan``'s run as dispatched; watch that a worker starts it.

    Call it in ``Executor.dispatch`` before handing the processor over, so
    that the worker's "running" always comes after it.  If no worker has
    started the processor ``dispatch_timeout`` seconds later, the processor is
    failed (``DispatchTimeout``) and its readers raise ``ProcessorFailed``
    naming it.
    """
    runtime = await supervisor.runtime()
    run_id = plan.run_id
    now = time.time()
    start_by = now + runtime.settings.dispatch_timeout
    try:
        await runtime.client.custom_command([
            "HSET", keys.stats(run_id), f"state:{name}", liveness.DISPATCHED,
            f"dispatched:{name}", repr(now), f"start_by:{name}", repr(start_by),
        ])
    except Exception as exc:
        raise StoreError(f"could not record the dispatch of processor {name!r}: {exc}") from exc
    runtime.host.start_soon(
        _expect_start, runtime, run_id, name, start_by, name=f"datagraph-dispatch-{name}"
    )


async def fail_dispatch(supervisor: Context, plan: Plan, name: str, why: str) -> RunError:
    """Fail processor ``name``, which could not be handed to a worker; returns the error to raise.

    Its readers raise ``ProcessorFailed`` (type ``DispatchError``) with ``why``.
    """
    runtime = await supervisor.runtime()
    failure = liveness.Failure(
        processor=name, kind="DispatchError", message=why, worker=None, state=liveness.DISPATCHED
    )
    with anyio.CancelScope(shield=True):
        await liveness.fail_processors(runtime, plan.run_id, [failure])
    return DispatchError(why, run_id=plan.run_id)


async def _expect_start(runtime: Runtime, run_id: str, name: str, start_by: float) -> None:
    """Caller-side watchdog: once ``start_by`` passes, fail ``name`` if no worker started it."""
    await anyio.sleep(max(0.0, start_by - time.time()) + 0.05)
    try:
        await liveness.check_processors(runtime, run_id, [name])
    except StoreError as exc:
        log.warning("run %s: could not check that processor %r started: %s", run_id, name, exc)


# -- worker side -------------------------------------------------------------------


async def run_dispatched(run_id: str, name: str, supervisor: Context | None = None) -> None:
    """Run processor ``name`` of run ``run_id`` here; return when it has ended.

    The implementation is the one registered in this process (the function
    decorated with the processor); ``supervisor`` defaults to
    ``Supervisor.instance``.  A run that is unknown, expired, cancelled or
    failed (other than upstream of this processor) does not start it.
    """
    supervisor = supervisor if supervisor is not None else context.attached()
    runtime = await supervisor.runtime()
    raw_plan, state, error = await runtime.client.custom_command(
        ["HMGET", keys.run(run_id), "plan", "state", "error"]
    )
    if raw_plan is None:
        log.warning("run %s is unknown or expired; processor %r not started", run_id, name)
        return
    plan = Plan.from_json(raw_plan)
    failure = run_error(error) if state == b"failed" else {}
    if failure and failure.get("processor") in plan.upstream(name):
        # Downstream of the failure: it passes on what was written before it, then
        # meets the failure in its input (as it would had it started earlier).
        log.info("run %s failed upstream of processor %r; starting it to drain its input", run_id, name)
    elif state is not None and state.decode() in TERMINAL:
        log.info("run %s already %s; processor %r not started", run_id, state.decode(), name)
        if state == b"failed":
            # Cancelled runs' streams are ended by cancel(); a failure must be passed on.
            await end_unstarted(runtime, plan, name, failure_error(failure, run_id))
        return
    processor = registry.get(name)
    impl = processor.implementation if processor is not None else None
    if impl is None:
        await liveness.fail_processors(runtime, run_id, [liveness.Failure(
            processor=name, kind="UnknownProcessorError",
            message=f"worker {runtime.worker_id} received processor {name!r} but does not "
                    "implement it; restart the worker after changing what it implements",
            worker=runtime.worker_id, state=liveness.DISPATCHED,
        )])
        return
    async with liveness.running(runtime, run_id, name), anyio.create_task_group() as tg:
        tg.start_soon(_stop_when_run_ends, runtime, plan, name, tg.cancel_scope)
        try:
            await run_processor(supervisor, runtime, plan, impl)
        finally:
            tg.cancel_scope.cancel()


async def _stop_when_run_ends(runtime: Any, plan: Plan, name: str, scope: anyio.CancelScope) -> None:
    """Stop the processor when its run fails or is cancelled elsewhere, freeing its slot.

    Without this, a producer whose reader's worker died could wait on
    backpressure forever, holding a pool slot.  A processor downstream of the
    failed one is spared: it first passes on what was written before the
    failure, then meets the failure in its input and ends by itself (stopping
    it would turn the failure into a cancel for everyone downstream, and drop
    those values).  It is stopped all the same if it has not ended within
    ``idle_timeout``, the patience a reader has with a silent producer.
    """
    interval = min(1.0, runtime.settings.heartbeat_interval / 2)
    upstream = plan.upstream(name)
    spare_until: float | None = None
    while True:
        await anyio.sleep(interval)
        try:
            state, error = await runtime.client.custom_command(
                ["HMGET", keys.run(plan.run_id), "state", "error"]
            )
        except Exception as exc:
            log.debug("run %s: could not read its state: %s", plan.run_id, exc)
            continue
        if state == b"failed" and run_error(error).get("processor") in upstream:
            now = anyio.current_time()
            if spare_until is None:
                spare_until = now + runtime.settings.idle_timeout
            if now < spare_until:
                continue
        if state is None or state in (b"failed", b"cancelled"):
            scope.cancel()
            return
