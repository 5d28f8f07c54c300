"""Runs one processor of one run: reads its inputs, pumps its outputs."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from glide import GlideError as GlideBaseError

from .exceptions import BadValueError, ProcessorFailed, RunCancelled, RunLostError, StoreError
from .io import IO, IOBatch, IOVal, SyncIO
from .plan import Plan
from .processor import Implementation, Kind
from .runtime import Runtime
from .store import keys, scripts
from .store.client import pipeline
from .streams import StreamWriter

if TYPE_CHECKING:
    from .context import Context

__all__ = ["end_unstarted", "run_processor"]

log = logging.getLogger("datagraph.runner")

_SYNC_CHUNK = 256


async def run_processor(supervisor: Context, runtime: Runtime, plan: Plan, impl: Implementation) -> None:
    """Run ``impl`` as its processor in ``plan``; record the outcome in the store.

    Never raises for a failure of the processor itself: the failure is written
    to the run and to the output streams, where readers find it.
    """
    name = impl.processor.name
    run_id = plan.run_id
    spec = plan.processor(name)
    writer = _writer_for(runtime, plan, name)
    stats_key = keys.stats(run_id)
    started = time.time()
    error: BaseException | None = None
    running = [
        "HSET", stats_key, f"state:{name}", "running", f"started:{name}", repr(started),
        f"worker:{name}", runtime.worker_id,
    ]  # fmt: skip
    try:
        # Recorded with the processor's first round trip (its first read, or else a
        # flush at the flusher's first turn), not before it: no round trip of its own.
        writer.send_with_next_flush([running])
        # No flusher task yet: the writer has the runtime's starter start one if it
        # has something to send while the processor waits (datagraph.flushers).
        try:
            scope = anyio.CancelScope()
            runtime.running.setdefault(run_id, {})[scope] = name
            try:
                with scope:
                    if spec.get("wait"):
                        waiting = time.monotonic()
                        # Inputs in hand have ended already: no need to poll them.
                        pending = [io for io in spec["inputs"] if io not in plan.given]
                        await _wait_for_inputs(runtime, run_id, pending, name)
                        writer.clock.idle += time.monotonic() - waiting
                    await _call(supervisor, impl, plan, writer)
            finally:
                reason = runtime.stop_reasons.get(run_id)
                _forget(runtime, run_id, scope)
            if scope.cancelled_caught:
                # Stopped by cancel() or by another processor's failure in this process.
                raise reason or writer.stop_reason()
        except Exception as exc:
            error = exc
        finally:
            writer.stop_flusher()
        # Let a flush in flight finish (cancelling it would drop its batch); its
        # failure, if any, is then the writer's error.
        await writer.wait_flushed()
        if error is None:
            error = writer.error
        if error is None:
            await _finish_ok(runtime, plan, name, writer)
            return
    except BaseException as exc:
        error = exc
    await _finish_failed(runtime, plan, name, writer, error)
    if isinstance(error, anyio.get_cancelled_exc_class()):
        raise error


async def end_unstarted(runtime: Runtime, plan: Plan, name: str, failure: ProcessorFailed) -> None:
    """End the outputs of processor ``name``, which will not start: its run has already failed.

    Its readers (the caller, processors on other workers) meet the run's
    failure instead of waiting for values that will never come.
    """
    await _finish_failed(runtime, plan, name, _writer_for(runtime, plan, name), failure)


def _writer_for(runtime: Runtime, plan: Plan, name: str) -> StreamWriter:
    """The writer of processor ``name``'s outputs in ``plan``."""
    outputs = {io: plan.readers.get(io, []) for io in plan.processor(name)["outputs"]}
    # Consumed entries of in-flow edges are trimmed; streams the caller reads are kept.
    trim = [io for io in outputs if io not in plan.outputs] if plan.trim else []
    return StreamWriter(
        runtime,
        plan.run_id,
        name,
        outputs,
        max_backlog=plan.max_backlog[name],
        trim=trim,
        unbounded=[p["name"] for p in plan.processors if p.get("wait")],
        upstream=plan.upstream(name),
        starter=runtime.flushers,
    )


def _forget(runtime: Runtime, run_id: str, scope: anyio.CancelScope) -> None:
    scopes = runtime.running.get(run_id)
    if scopes is not None:
        scopes.pop(scope, None)
        if not scopes:
            del runtime.running[run_id]
            runtime.stop_reasons.pop(run_id, None)


async def _call(supervisor: Context, impl: Implementation, plan: Plan, writer: StreamWriter) -> None:
    name = impl.processor.name
    inputs: dict[str, Any] = {}
    # Inputs of the run in hand here (this process started it): read without a round trip.
    given = plan.given or None
    for io in impl.processor.inputs:
        handle: IO[Any] = IO(
            supervisor, plan.run_id, io, reader=name, producers=plan.producers, writer=writer, given=given
        )
        inputs[io] = SyncIO(handle) if impl.kind in (Kind.SYNC, Kind.SYNC_GEN) else handle
    async with AsyncExitStack() as stack:
        kwargs = await impl.resolve(stack, inputs)
        if impl.kind == Kind.ASYNC_GEN:
            agen = impl.func(**kwargs)
            try:
                await _pump(agen, writer, name)
            finally:
                await agen.aclose()
        elif impl.kind == Kind.COROUTINE:
            await _put_returned(await impl.func(**kwargs), writer, name)
        elif impl.kind == Kind.SYNC_GEN:
            await anyio.to_thread.run_sync(_pump_sync, impl.func, kwargs, writer, name)
        else:
            result = await anyio.to_thread.run_sync(lambda: impl.func(**kwargs))
            await _put_returned(result, writer, name)


async def _pump(agen: Any, writer: StreamWriter, name: str) -> None:
    """Move yielded values into the writer's buffers: the per-value hot path."""
    buffers = writer.buffers
    limits = writer.limits
    # The output last yielded to and its buffer (a writer keeps its buffer lists for
    # its whole life): a processor that yields to one output looks it up once.
    io: Any = None
    buf: list[Any] = []
    append = buf.append
    async for item in agen:
        if type(item) is not IOVal:
            if isinstance(item, IOBatch):
                await writer.put_many(item.name, item.values)
                continue
            item = _as_ioval(item, name)
        if item[0] is not io:
            io = item[0]
            found = buffers.get(io)
            if found is None:
                raise writer.undeclared(io)
            buf = found
            append = buf.append
        append(item[1])
        n = len(buf)
        if n == 1:
            writer.started_batch()
        # The linger clock is read every 16th value only: time.monotonic() per value shows.
        if n >= limits[io] or (n & 15 == 0 and writer.lingering()):
            await writer.make_room(io)


def _as_ioval(item: Any, name: str) -> IOVal[Any]:
    if isinstance(item, IOVal):
        return item
    raise BadValueError(
        f"processor {name!r} yielded {type(item).__name__} {item!r:.80}; "
        "yield IOVal(name=<output>, value=...) or IOBatch(name=<output>, values=[...]) instead"
    )


async def _put(writer: StreamWriter, item: Any, name: str) -> None:
    """Buffer one yielded or returned item (an IOVal or an IOBatch), waiting for room if need be."""
    if isinstance(item, IOBatch):
        await writer.put_many(item.name, item.values)
        return
    item = _as_ioval(item, name)
    if writer.put(item.name, item.value):
        await writer.make_room(item.name)


async def _put_returned(result: Any, writer: StreamWriter, name: str) -> None:
    if result is None:
        return
    items: Iterable[Any] = [result] if isinstance(result, IOVal | IOBatch) else result
    try:
        iterator = iter(items)
    except TypeError:
        raise BadValueError(
            f"processor {name!r} returned {type(result).__name__}; return None, an IOVal, an IOBatch "
            "or a list of them"
        ) from None
    for item in iterator:
        await _put(writer, item, name)


async def _put_chunk(writer: StreamWriter, chunk: list[Any], name: str) -> None:
    for item in chunk:
        await _put(writer, item, name)
    if writer.lingering():
        await writer.make_room(chunk[-1].name)


def _pump_sync(func: Any, kwargs: dict[str, Any], writer: StreamWriter, name: str) -> None:
    """Iterate a sync generator in a worker thread, handing values over in chunks."""
    chunk: list[Any] = []
    deadline = time.monotonic() + writer._linger
    gen = func(**kwargs)
    try:
        for item in gen:
            chunk.append(item)
            if len(chunk) >= _SYNC_CHUNK or time.monotonic() > deadline:
                anyio.from_thread.run(_put_chunk, writer, chunk, name)
                chunk = []
                deadline = time.monotonic() + writer._linger
        if chunk:
            anyio.from_thread.run(_put_chunk, writer, chunk, name)
    finally:
        gen.close()


async def _wait_for_inputs(runtime: Runtime, run_id: str, inputs: list[str], name: str) -> None:
    """Block until every input stream ends (partition barrier)."""
    pending = list(inputs)
    delay = 0.002
    await runtime.recorded(run_id)  # a run starting here: after its record
    while pending:
        replies, _ = await pipeline(
            runtime.client,
            [["XREVRANGE", keys.stream(run_id, io), "+", "-", "COUNT", "1"] for io in pending],
            retry_for=runtime.settings.reconnect_timeout,
            doing=f"waiting for the inputs of {name!r} (run {run_id})",
        )
        for io, last in zip(list(pending), replies, strict=True):
            if isinstance(last, GlideBaseError):
                raise StoreError(f"Valkey refused to read {io!r} of run {run_id}: {last}")
            if last and _is_marker(last):
                pending.remove(io)
        if pending:
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.1)


def _is_marker(reply: Any) -> bool:
    entries = reply.values() if isinstance(reply, dict) else [e[1] for e in reply]
    for fields in entries:
        return bool(fields and fields[0][0] == b"e")
    return False


def _release_inputs(plan: Plan, name: str) -> list[list[str]]:
    """Mark this processor's inputs as read to the end, whatever it actually read.

    A processor may stop reading early (``first()``, a zip that stops at the
    shortest input): once it has finished, its position must not hold the
    input's writer back, or that writer would wait forever.
    """
    fields: list[str] = []
    for io in plan.processor(name)["inputs"]:
        fields += [keys.pos_done_field(name, io), "1"]
    return [["HSET", keys.pos(plan.run_id), *fields]] if fields else []


async def _finish_ok(runtime: Runtime, plan: Plan, name: str, writer: StreamWriter) -> None:
    marker = runtime.codec.end_marker(name)
    result = await writer.close(
        dict.fromkeys(writer.buffers, marker),
        extra=[scripts.processor_done_command(runtime, plan, name)],
        # With the read positions the processor's readers hand over: one HSET.
        also=_release_inputs(plan, name),
    )
    if result[-1] == -1:
        raise scripts.lost_run_error(plan.run_id)


async def _end_outputs(
    runtime: Runtime, writer: StreamWriter, markers: dict[str, bytes], extra: list[list[str]]
) -> list[Any]:
    """Write the failure markers, keeping what was yielded before the failure if possible.

    Returns the replies to ``extra``.
    """
    try:
        return await writer.close(markers, extra=extra)
    except BadValueError:
        pass  # what failed is a buffered value: send the markers without it
    except StoreError as exc:
        if "OOM" not in str(exc):
            raise
        # Valkey is full, so nothing can be added, not even the failure. Release this
        # processor's outputs (the run has failed) so that readers can learn why.
        await runtime.client.custom_command(["DEL", *writer.stream_keys()])
    for buffer in writer.buffers.values():
        buffer.clear()
    delay = 0.05
    for _ in range(8):
        try:
            return await writer.close(markers, extra=extra)
        except StoreError as exc:
            if "OOM" not in str(exc):
                raise
            # Valkey may free the deleted streams in the background: give it a moment.
            await anyio.sleep(delay)
            delay *= 2
    return await writer.close(markers, extra=extra)


async def _finish_failed(
    runtime: Runtime, plan: Plan, name: str, writer: StreamWriter, exc: BaseException
) -> None:
    """Flush what was yielded, end the outputs with the failure, fail the run."""
    if isinstance(exc, RunLostError):
        log.error("processor %r stopped: %s", name, exc)
        return  # there is no run left to record the failure in
    cancelled = isinstance(exc, RunCancelled | anyio.get_cancelled_exc_class())
    worker = runtime.worker_id
    if isinstance(exc, ProcessorFailed):
        origin, etype, message, tb = exc.processor, exc.error_type, exc.error_message, exc.traceback
        # Name the worker where the failure happened, not the one that passed it on.
        worker = exc.worker or worker
    else:
        origin, etype, message = name, type(exc).__name__, str(exc)
        tb = "".join(traceback.format_exception(exc))
    status = "cancelled" if cancelled else "failed"
    if cancelled:
        origin, etype, message, tb = name, "RunCancelled", f"run {plan.run_id} was cancelled", ""
        worker = runtime.worker_id
    else:
        log.warning("processor %r of run %s failed: %s: %s", name, plan.run_id, etype, message)
    marker = runtime.codec.encode_marker(
        {
            "status": status,
            "processor": origin,
            "type": etype,
            "message": message,
            "traceback": tb,
            "worker": worker,
        }
    )
    stats_key = keys.stats(plan.run_id)
    error = {"processor": origin, "type": etype, "message": message, "traceback": tb, "worker": worker}
    # The run's end goes in the same pipeline as the markers: if the event loop is
    # shutting down and no reply can be read any more, the store has it all the same.
    extra = [
        *_release_inputs(plan, name),
        ["HSET", stats_key, f"state:{name}", status, f"ended:{name}", repr(time.time())],
        scripts.finish_run_command(runtime, plan, status, error=error),
    ]
    shutting_down = isinstance(exc, anyio.get_cancelled_exc_class())
    deadline = (
        min(2.0, runtime.settings.request_timeout) if shutting_down else runtime.settings.request_timeout
    )
    with anyio.CancelScope(shield=True), anyio.move_on_after(deadline):
        try:
            replies = await _end_outputs(runtime, writer, dict.fromkeys(writer.buffers, marker), extra)
            if replies and replies[-1] == -1:
                raise scripts.lost_run_error(plan.run_id)
            if not cancelled:
                # The run has failed: its other processors in this process stop now, but
                # those downstream of where it failed first pass on what came before.
                reason = ProcessorFailed(origin, etype, message, tb, run_id=plan.run_id, worker=worker)
                known = origin in {p["name"] for p in plan.processors}
                runtime.stop_run(plan.run_id, reason, spare=plan.downstream(origin if known else name))
        except Exception as store_exc:  # the store itself is failing; say so, keep the cause
            log.error(
                "processor %r of run %s failed (%s: %s) and the failure could not be recorded: %s",
                name,
                plan.run_id,
                etype,
                message,
                store_exc,
            )
