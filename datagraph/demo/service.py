"""The demo's Celery service: implements every demo processor.

Run it as a worker (``datagraph demo`` does this for you)::

    DATAGRAPH_REDIS_URL=redis://127.0.0.1:6379/0 \\
    DATAGRAPH_DEMO_BROKER_URL=redis://127.0.0.1:6379/1 \\
    DATAGRAPH_SECRET=... \\
    celery -A datagraph.demo.service worker --pool threads --concurrency 48 \\
        --prefetch-multiplier=1 --disable-prefetch

The store comes from ``DATAGRAPH_REDIS_URL`` and the signing key from
``DATAGRAPH_SECRET`` (the engine's own settings); Celery's broker is another
database of the same Valkey, from ``DATAGRAPH_DEMO_BROKER_URL``.  A process
that only starts demo flows builds the same app with :func:`make_app` and
attaches its own supervisor; it does not import this module's ``app``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from ..exceptions import ConfigError

__all__ = ["BROKER_ENV", "make_app"]

#: Environment variable carrying Celery's broker URL.
BROKER_ENV = "DATAGRAPH_DEMO_BROKER_URL"


def make_app(broker_url: str) -> Celery:
    """The demo's Celery app on ``broker_url`` (a Valkey database)."""
    app = Celery("datagraph-demo", broker=broker_url)
    app.conf.update(
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def _service() -> Celery:
    from .. import Supervisor
    from ..executors.celery import CeleryExecutor
    from . import processors  # noqa: F401  (registers the implementations)

    broker_url = os.environ.get(BROKER_ENV)
    if not broker_url:
        raise ConfigError(
            f"the demo service needs {BROKER_ENV} (Celery's broker, e.g. redis://127.0.0.1:6379/1) "
            "and DATAGRAPH_REDIS_URL (the store); `datagraph demo` sets both"
        )
    if not os.environ.get("DATAGRAPH_REDIS_URL"):
        raise ConfigError("the demo service needs DATAGRAPH_REDIS_URL, the store's URL")
    app = make_app(broker_url)
    Supervisor.attach(executor=CeleryExecutor(app))
    return app


def __getattr__(name: str) -> Any:
    # ``celery -A datagraph.demo.service`` looks up ``app``: build the service
    # then, so importing this module for make_app() attaches nothing.
    if name == "app":
        app = _service()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
