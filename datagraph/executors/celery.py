"""Running processors on Celery workers, one Celery task per processor of a run.

A *service* is a module that creates its Celery app, imports the processors it
implements and attaches a supervisor with this executor::

    app = Celery("orders", broker="redis://valkey:6379/1")
    from orders import processors  # decorates the processors this service implements
    Supervisor.attach(redis_config={"url": "redis://valkey:6379/0"},
                      executor=CeleryExecutor(app))

Its worker is Celery's own ``celery -A orders worker --prefetch-multiplier=1
--disable-prefetch`` (``docs/celery.md`` says why).  Every processor has a
queue, ``datagraph.<name>``; the executor adds the queues of the processors
implemented in the process to what its worker consumes, so a dispatched
processor reaches only services that implement it.  A process that merely
declares ``Processor(...)`` specs uses the same executor to start flows.

In a worker process the processors run on one event loop in a thread of
their own (a blocking portal); the Celery task that runs a processor waits
for it there, holding its pool slot exactly as long as the processor runs.
That loop also carries the process's heartbeat (:mod:`datagraph.liveness`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread

try:
    import click
    from celery import bootsteps, signals
    from kombu.entity import Exchange, Queue
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        'CeleryExecutor needs Celery, which is not installed: pip install "datagraph[celery]"'
    ) from exc

from .. import context, liveness
from ..exceptions import ConfigError, StoreError, UnknownProcessorError, WorkerStopping
from ..plan import Plan
from ..processor import Processor, registry
from ..store import keys
from .base import Executor
from .worker import fail_dispatch, record_dispatch, run_dispatched

if TYPE_CHECKING:
    from celery import Celery

    from ..context import Context

__all__ = ["HAND_OVER_SIGNAL", "QUEUE_PREFIX", "TASK_NAME", "CeleryExecutor", "hand_over"]

log = logging.getLogger("datagraph.celery")

#: The Celery task every processor runs through.
TASK_NAME = "datagraph.run_processor"
#: Processor ``p`` is dispatched to the Celery queue ``datagraph.p``.
QUEUE_PREFIX = "datagraph."


def _queue_prefix() -> str:
    """``datagraph.``, or ``datagraph.<namespace>.`` outside the default namespace."""
    namespace = keys.namespace()
    return QUEUE_PREFIX if namespace == keys.DEFAULT_NAMESPACE else f"{QUEUE_PREFIX}{namespace}."

_BACKENDS = ("asyncio", "trio")
#: What a stopping prefork worker sends its pool processes (see ``_on_shutting_down``).
HAND_OVER_SIGNAL = signal.SIGUSR2


class CeleryExecutor(Executor):
    """Dispatches each processor of a run as a Celery task to the services that implement it.

    ``backend`` is the event loop ("asyncio" or "trio") the processors of this
    process run on when it is a worker.  ``worker_grace`` is how long
    ``start_flow`` waits for a worker implementing each processor to appear
    before it raises :class:`~datagraph.exceptions.UnknownProcessorError`
    (default: one lease, ``Settings.lease``).
    """

    kind = "celery"

    def __init__(
        self,
        app: Celery,
        *,
        backend: str = "asyncio",
        worker_grace: float | None = None,
    ) -> None:
        if backend not in _BACKENDS:
            raise ConfigError(f"CeleryExecutor backend must be 'asyncio' or 'trio', got {backend!r}")
        if worker_grace is not None and worker_grace < 0:
            raise ConfigError(f"worker_grace must not be negative, got {worker_grace!r}")
        self.app = app
        self.backend = backend
        self.worker_grace = worker_grace
        self._consuming = False
        self._loop: _WorkerLoop | None = None
        self._loop_lock = threading.Lock()
        app.task(
            name=TASK_NAME, ignore_result=True, acks_late=False, reject_on_worker_lost=False,
            typing=False, shared=False,
        )(_run_processor_task)
        # Weak receivers: an executor dropped with its supervisor stops listening.
        signals.celeryd_after_setup.connect(self._on_worker_setup)
        signals.worker_ready.connect(self._on_worker_ready)
        signals.worker_process_init.connect(self._on_process_init)
        signals.worker_process_shutdown.connect(self._on_process_shutdown)
        signals.worker_shutdown.connect(self._on_worker_shutdown)
        signals.worker_shutting_down.connect(self._on_shutting_down)
        self._worker: Any = None
        self._handing_over = False
        #: ``celery worker --shutdown-grace``, when given: it wins over the setting.
        self.shutdown_grace: float | None = None
        _add_shutdown_grace_option(self)

    def __repr__(self) -> str:
        return f"CeleryExecutor({self.app.main!r}, backend={self.backend!r})"

    # -- routing -------------------------------------------------------------

    @staticmethod
    def queue_name(processor: str) -> str:
        """The Celery queue that carries ``processor``'s tasks (``datagraph.<namespace>.<name>``
        in a namespace other than the default, so deployments sharing a broker stay apart)."""
        return f"{_queue_prefix()}{processor}"

    @staticmethod
    def _queue(name: str) -> Queue:
        exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
        return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]

    def implemented(self) -> list[str]:
        """Names of the processors implemented in this process."""
        return sorted(p.name for p in registry.all() if p.implementation is not None)

    def subscribe(self) -> list[str]:
        """Make this process's worker consume the queue of each processor implemented here."""
        queues = self.app.amqp.queues
        names = [self.queue_name(p) for p in self.implemented()]
        for name in names:
            if name not in queues.consume_from:
                queues.select_add(self._queue(name))
        return names

    def consumed_queues(self) -> list[str]:
        """The processor queues this process consumes (empty unless it is a worker)."""
        if not self._consuming:
            return []
        prefix = _queue_prefix()
        return sorted(q for q in self.app.amqp.queues.consume_from if q.startswith(prefix))

    # -- caller side ---------------------------------------------------------

    async def check(self, supervisor: Context, plan: Plan, processors: list[Processor]) -> None:
        """Raise ``UnknownProcessorError`` for a processor no live worker consumes."""
        runtime = await supervisor.runtime()
        grace = runtime.settings.lease if self.worker_grace is None else self.worker_grace
        deadline = time.monotonic() + grace
        delay = 0.05
        while True:
            workers = await liveness.live_workers(runtime)
            served = {q for w in workers for q in w.queues}
            missing = [p.name for p in processors if self.queue_name(p.name) not in served]
            if not missing:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await anyio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)
        known = sorted({p for w in workers if w.queues for p in w.processors})
        name = missing[0]
        others = f" (and {', '.join(map(repr, missing[1:]))})" if len(missing) > 1 else ""
        raise UnknownProcessorError(
            f"processor {name!r}{others} is not implemented by any live Celery worker: none "
            f"consuming queue {self.queue_name(name)!r} has heart-beaten in the last "
            f"{runtime.settings.lease:g}s (waited {grace:g}s for workers that are starting). "
            f"Start a service that implements it (celery -A <service> worker); live workers "
            f"implement: {', '.join(known) if known else 'nothing'}"
        )

    async def dispatch(self, supervisor: Context, plan: Plan, processor: Processor) -> None:
        """Send ``processor`` of the run to its queue; a watchdog fails it if nobody starts it."""
        name = processor.name
        await record_dispatch(supervisor, plan, name)
        try:
            await anyio.to_thread.run_sync(self._send, plan.run_id, name)
        except Exception as exc:
            why = f"could not send processor {name!r} to the Celery broker: {exc}"
            raise await fail_dispatch(supervisor, plan, name, why) from exc

    def _send(self, run_id: str, name: str) -> None:
        self.app.send_task(TASK_NAME, args=(run_id, name), queue=self.queue_name(name))

    # -- worker side ---------------------------------------------------------

    def _on_worker_setup(self, sender: Any = None, instance: Any = None, **_: Any) -> None:
        """``celeryd_after_setup``: consume our queues (also when ``-Q`` selected others)."""
        if instance is None or instance.app is not self.app:
            return
        names = self.subscribe()
        self._consuming = True
        self._worker = instance
        multiplier = getattr(instance, "prefetch_multiplier", self.app.conf.worker_prefetch_multiplier)
        if multiplier != 1 or not self.app.conf.worker_disable_prefetch:
            log.warning(
                "this worker may reserve processors it has no free slot for; start it with "
                "--prefetch-multiplier=1 --disable-prefetch (see the docs on running on Celery)"
            )
        log.info("datagraph processors served here: %s", ", ".join(names) or "none")

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        """``worker_ready``: a pool that runs tasks in this process starts our loop now."""
        if sender is None or sender.app is not self.app or not self._consuming:
            return
        from celery.concurrency.prefork import TaskPool as PreforkPool

        if not isinstance(sender.pool, PreforkPool):
            self.worker_loop()

    def _on_process_init(self, **_: Any) -> None:
        """``worker_process_init``: a prefork child starts its own loop (and heartbeat)."""
        if self._consuming:
            self._handing_over = False
            self.worker_loop()
            # The parent tells its pool processes of a warm shutdown with this signal.
            signal.signal(HAND_OVER_SIGNAL, self._on_hand_over_signal)

    # -- graceful shutdown ---------------------------------------------------

    def _on_shutting_down(self, sender: Any = None, how: str = "", **_: Any) -> None:
        """``worker_shutting_down`` (in the main process): hand over after the grace period.

        Celery stops taking tasks at once; processors still running after the
        ``shutdown_grace`` setting are stopped with ``WorkerStopping``, so their
        runs fail with a cause that retry policies retry, instead of the worker
        waiting for an endless stream or being killed mid-write.
        """
        if how != "Warm" or not self._consuming:
            return
        if self._loop is not None and self._loop.pid == os.getpid():
            self._hand_over_soon()  # a threads or solo pool: the processors run here
            return
        for pid in _pool_pids(self._worker):
            try:
                os.kill(pid, HAND_OVER_SIGNAL)
            except ProcessLookupError:
                continue

    def _on_hand_over_signal(self, signum: int, frame: Any) -> None:
        self._hand_over_soon()

    def _hand_over_soon(self) -> None:
        loop = self._loop
        if loop is None or loop.pid != os.getpid() or self._handing_over:
            return
        self._handing_over = True
        # Not from the signal handler itself: a thread waits for the hand-over.
        threading.Thread(
            target=loop.hand_over, args=(self.shutdown_grace,), name="datagraph-hand-over", daemon=True
        ).start()

    def _on_process_shutdown(self, **_: Any) -> None:
        self._stop_loop()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        self._stop_loop()

    def worker_loop(self) -> _WorkerLoop:
        """This process's processor loop, started (with the heartbeat) on first use."""
        with self._loop_lock:
            loop = self._loop
            if loop is None or loop.pid != os.getpid():
                loop = self._loop = _WorkerLoop(self.backend)
            return loop

    def _stop_loop(self) -> None:
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None and loop.pid == os.getpid():
            loop.close()

    def run_task(self, run_id: str, processor: str) -> None:
        """Body of the Celery task: run ``processor`` of ``run_id``; return when it ends."""
        future = self.worker_loop().portal.start_task_soon(run_dispatched, run_id, processor)
        try:
            future.result()
        except BaseException:
            # The task itself was interrupted (a time limit, a shutdown): so is the processor.
            future.cancel()
            raise


class _WorkerLoop:
    """An event loop in a thread of its own, where this worker runs its processors."""

    def __init__(self, backend: str) -> None:
        self.pid = os.getpid()
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(
            anyio.from_thread.start_blocking_portal(backend, name="datagraph-worker-loop")
        )
        # Connect (which starts the heartbeat) without holding up the pool process's start.
        self._bring_up = self.portal.start_task_soon(_bring_up, context.attached())

    def hand_over(self, grace: float | None = None) -> None:
        """Wait ``grace`` (default: the setting) for this loop's processors; stop those still running."""
        try:
            self.portal.call(hand_over, context.attached(), grace)
        except Exception as exc:  # the loop is closing: nothing left to hand over
            log.warning("could not hand this worker's processors over: %r", exc)

    def close(self) -> None:
        try:
            self.portal.call(_mark_stopped, context.attached())
        except Exception as exc:  # shutting down: say so, and go on
            log.debug("could not mark this worker stopped: %s", exc)
        with contextlib.suppress(Exception):
            self.portal.call(self.portal.stop, True)
        self._stack.close()


async def _bring_up(supervisor: Context) -> None:
    """Create this loop's runtime (and so its heartbeat) before the first task arrives.

    Retried while the store is unreachable: a worker that does not beat is
    offered no work.
    """
    delay = 0.5
    while True:
        try:
            await supervisor.runtime()
            return
        except StoreError as exc:
            log.warning("this worker cannot reach the store yet (retrying in %gs): %s", delay, exc)
        await anyio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def hand_over(supervisor: Context, grace: float | None = None) -> int:
    """A warm shutdown: stop the processors still running here after ``grace`` seconds.

    ``grace`` defaults to the ``shutdown_grace`` setting (``celery worker
    --shutdown-grace`` gives it for one worker).

    Each is failed with :class:`~datagraph.exceptions.WorkerStopping` (written
    like any failure, after the flush in flight), which retry policies retry.
    Returns how many runs were handed over.
    """
    runtime = await supervisor.runtime()
    if grace is None:
        grace = runtime.settings.shutdown_grace
    log.warning(
        "this worker is stopping: it takes no more processors; those still running in %gs "
        "are handed over (their runs fail as WorkerStopping and are retried under their policy)",
        grace,
    )
    with anyio.move_on_after(grace):
        for _ in itertools.count():
            if not runtime.running:
                break  # every processor ended within the grace period
            await anyio.sleep(0.05)
    runs = list(runtime.running)
    for run_id in runs:
        names = sorted(set(runtime.running.get(run_id, {}).values()))
        runtime.stop_run(run_id, WorkerStopping(
            f"worker {runtime.worker_id} was asked to stop and handed over processor(s) "
            f"{', '.join(map(repr, names))} still running after shutdown_grace={grace:g}s; "
            "a run with retries is started again on another worker",
            run_id=run_id,
        ))
    return len(runs)


def _pool_pids(worker: Any) -> list[int]:
    """The pool processes of a prefork worker (WorkController), or none."""
    pool = getattr(getattr(worker, "pool", None), "_pool", None)
    processes = getattr(pool, "_pool", None) or []
    return [p.pid for p in processes if getattr(p, "pid", None)]


async def _mark_stopped(supervisor: Context) -> None:
    await liveness.mark_stopped(await supervisor.runtime())


def _run_processor_task(run_id: str, processor: str) -> None:
    """The Celery task: run one processor of one run in this worker."""
    executor = context.attached().executor
    if not isinstance(executor, CeleryExecutor):
        raise ConfigError(
            f"this worker's supervisor uses {executor!r}; attach it with executor=CeleryExecutor(app) "
            f"to run processor {processor!r}"
        )
    executor.run_task(run_id, processor)


#: The worker side of a Celery task (kept under its old name for callers of it).
_execute = run_dispatched


def _add_shutdown_grace_option(executor: CeleryExecutor) -> None:
    """``celery -A <service> worker --shutdown-grace SECONDS``: this worker's ``shutdown_grace``."""
    app = executor.app
    options = app.user_options["worker"]
    if not any(getattr(o, "name", None) == "shutdown_grace" for o in options):
        options.add(click.Option(
            ["--shutdown-grace"], type=click.FloatRange(min=0), default=None,
            help="Seconds a warm shutdown lets datagraph processors run before handing them "
                 "over to other workers (default: the shutdown_grace setting, "
                 "DATAGRAPH_SHUTDOWN_GRACE).",
        ))
    owner = weakref.ref(executor)

    class _ShutdownGrace(bootsteps.Step):  # type: ignore[misc]
        """Takes the worker's ``--shutdown-grace`` for this executor."""

        def __init__(self, parent: Any, shutdown_grace: float | None = None, **options: Any) -> None:
            super().__init__(parent, **options)
            target = owner()
            if target is not None and shutdown_grace is not None:
                target.shutdown_grace = float(shutdown_grace)

    app.steps["worker"].add(_ShutdownGrace)

