"""``datagraph dashboard``: serve the dashboard with uvicorn.

Which supervisor launches runs:

- ``--app module``: the module is imported and must attach its own
  supervisor (``Supervisor.attach(..., executor=...)``) at import time, as a
  service does; the dashboard then launches with that executor and may import
  that module's processor code. Nothing else is ever imported.
- otherwise, a supervisor is attached on ``--redis-url`` with a
  ``CeleryExecutor`` whose broker is ``--broker-url`` (default
  ``$DATAGRAPH_BROKER_URL``, else the store itself) when Celery is
  installed, and a ``LocalExecutor`` when it is not (which can run only
  processors implemented in this process: none, without ``--app``).

Stream previews are verified with ``DATAGRAPH_SECRET``, which must be the
workers' own.

The command registers itself when ``datagraph`` loads this module through
the ``datagraph.commands`` entry point (``pyproject.toml``). Only the
standard library and ``datagraph.cli`` are imported then, so ``datagraph
--help`` stays light; the web stack is imported by :func:`run`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from datagraph.cli import command

__all__ = ["add_arguments", "run"]

TOKEN_ENV = "DATAGRAPH_DASHBOARD_TOKEN"
VIEWER_TOKEN_ENV = "DATAGRAPH_DASHBOARD_VIEWER_TOKEN"
BROKER_ENV = "DATAGRAPH_BROKER_URL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url", metavar="URL",
        help="the store, e.g. redis://localhost:6379/0 (default: $DATAGRAPH_REDIS_URL)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument(
        "--app", metavar="MODULE",
        help="import MODULE, which attaches the supervisor (and executor) runs are launched with",
    )
    parser.add_argument(
        "--token", metavar="TOKEN",
        help=f"require this token from every client (default: ${TOKEN_ENV}; none)",
    )
    parser.add_argument(
        "--viewer-token", metavar="TOKEN",
        help=f"grant read-only access with this token (default: ${VIEWER_TOKEN_ENV}; none); needs --token",
    )
    parser.add_argument(
        "--broker-url", metavar="URL",
        help=f"Celery broker the workers listen on (default: ${BROKER_ENV}, else the store)",
    )
    parser.add_argument(
        "--stuck-after", type=float, default=300.0, metavar="SECONDS",
        help="list a running run as stuck after this long without a write (default: 300)",
    )
    parser.add_argument(
        "--notify-url", metavar="URL", action="append", default=None,
        help="POST JSON to this webhook on failed and stuck runs, backed-up edges and offline workers "
        "(repeatable; default: $DATAGRAPH_NOTIFY_URLS, comma-separated)",
    )
    parser.add_argument(
        "--notify-after", type=float, default=30.0, metavar="SECONDS",
        help="notify about an edge above 85%% of its backpressure limit for this long (default: 30)",
    )
    parser.add_argument(
        "--public-url", metavar="URL",
        help="the dashboard's address as people open it, for links in notifications "
        "(default: http://HOST:PORT)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def _fail(message: str) -> int:
    print(f"datagraph dashboard: {message}", file=sys.stderr)
    return 2


def _broker(url: str) -> str:
    """Kombu knows redis:// and rediss://; the same server answers valkey:// URLs."""
    for scheme, kombu in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
        if url.startswith(scheme):
            return kombu + url[len(scheme):]
    return url


def _is_cluster(store: str) -> bool:
    """Whether the store is a Valkey Cluster (its URL, or a connection, tells)."""
    import anyio

    from datagraph.settings import Settings
    from datagraph.store.client import parse_redis_config, store_is_cluster

    address = parse_redis_config({"url": store})
    if address.cluster is not None:
        return address.cluster
    timeout = Settings.from_env().connect_timeout
    return bool(anyio.run(lambda: store_is_cluster(address, connect_timeout=timeout)))


def _attach(args: argparse.Namespace, store: str | None) -> Any:
    """The supervisor to launch with: the --app module's, or one attached here."""
    from datagraph import LocalExecutor, Supervisor
    from datagraph.executors.base import Executor

    if args.app:
        sys.path.insert(0, os.getcwd())
        importlib.import_module(args.app)
        supervisor = Supervisor._current
        if supervisor is None:
            raise SystemExit(_fail(
                f"module {args.app!r} attached no Supervisor; call Supervisor.attach(redis_config=..., "
                "executor=...) when it is imported"
            ))
        return supervisor
    if not store:
        raise SystemExit(_fail("no store to read: pass --redis-url or set DATAGRAPH_REDIS_URL"))
    executor: Executor
    try:
        from celery import Celery

        from datagraph.executors.celery import CeleryExecutor
    except ImportError:
        executor = LocalExecutor()
    else:
        broker_url = args.broker_url or os.environ.get(BROKER_ENV)
        if broker_url is None and _is_cluster(store):
            raise SystemExit(_fail(
                f"the store at {store} is a Valkey Cluster, which Celery cannot use as its broker: "
                f"pass --broker-url (a standalone Valkey, RabbitMQ, ...) or set {BROKER_ENV}"
            ))
        broker = _broker(broker_url or store)
        celery_app = Celery("datagraph-dashboard", broker=broker)
        celery_app.conf.broker_connection_retry_on_startup = True
        executor = CeleryExecutor(celery_app)
    return Supervisor.attach(redis_config={"url": store}, executor=executor)


@command("dashboard", help="serve the web dashboard (processors, designer, runs, operations)",
         arguments=add_arguments)
def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted; returns the exit code."""
    import logging

    import uvicorn

    from datagraph.exceptions import DatagraphError

    from .app import create_app
    from .security import warn_if_exposed

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    viewer_token = args.viewer_token
    if viewer_token is None:
        viewer_token = os.environ.get(VIEWER_TOKEN_ENV, "")
    store = args.redis_url or os.environ.get("DATAGRAPH_REDIS_URL")
    try:
        supervisor = _attach(args, store)
    except SystemExit as exc:
        return int(exc.code or 2)
    except DatagraphError as exc:
        return _fail(str(exc))
    warning = warn_if_exposed(args.host, token)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    try:
        app = create_app(
            supervisor=supervisor,
            redis_url=args.redis_url if args.app else None,
            token=token,
            viewer_token=viewer_token,
            stuck_after=args.stuck_after,
            notify_urls=args.notify_url,
            notify_after=args.notify_after,
            public_url=args.public_url or f"http://{shown}:{args.port}",
        )
    except DatagraphError as exc:
        return _fail(str(exc))
    print(f"Datagraph dashboard: http://{shown}:{args.port}/ (executor: {supervisor.executor!r})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
