"""What every test service does: a Celery app on the test broker, a supervisor on the test store."""

from __future__ import annotations

import os

from celery import Celery
from glide import GlideClient

from datagraph import Supervisor
from datagraph.executors import CeleryExecutor

SECRET = b"celery-test-secret"


def attach(name: str, *, backend: str) -> Celery:
    app = Celery(name, broker=os.environ["DG_TEST_BROKER_URL"])
    app.conf.broker_connection_retry_on_startup = True
    Supervisor.attach(
        redis_config={"url": os.environ["DG_TEST_STORE_URL"]},
        executor=CeleryExecutor(app, backend=backend),
        secret=SECRET,
    )
    return app


async def store() -> GlideClient:
    """This worker's store client (processors use it as a side channel to the test)."""
    return (await Supervisor.instance.runtime()).client
