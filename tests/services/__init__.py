"""Services used by the Celery tests: each module is what a user's service module is.

``specs`` declares the processors (what a caller needs); ``alpha``, ``beta``
and ``gamma`` each create a Celery app, implement some of them and attach a
supervisor with the ``CeleryExecutor``.  Their workers are started with
``celery -A tests.services.<name> worker ...``; the store and the broker come
from ``DG_TEST_STORE_URL`` and ``DG_TEST_BROKER_URL``.
"""
