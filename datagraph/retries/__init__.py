"""Retry policies: a run that failed for a reason other than its own code starts again.

``start_flow(flow, inputs, retries=N, retry_on=(...))`` (or ``Flow(...,
retries=N)``, or the ``retries`` setting) makes a run *retried*: when an
attempt fails because a worker was lost (``WorkerLost``), handed its work
over while stopping (``WorkerStopping``), nobody started a processor in time
(``DispatchTimeout``) or none could be sent to the broker
(``DispatchError``), the store lost writes (``WritesLost``) or stayed
unreachable past ``reconnect_timeout`` (``StoreError``), or a processor
raised an exception whose type is named in ``retry_on``, the run is started
again from its inputs, after a backoff (``retry_backoff``, doubled each
time), up to N more times.  A processor's own exception is not retried unless
its type is listed.

Each attempt is a run of its own (attempt 1 keeps the run id ``start_flow``
returned; attempt n is ``<run id>.<n>``), so a failed attempt's keys stay as
they were for inspection.  The first attempt's record (``keys.run``) lists
every attempt in its ``attempts`` field (JSON: number, run id, start and end
times, cause); each attempt's record says which ``attempt`` it is, of which
``origin``, with how many ``retries``, and which attempt ``retried_by`` it,
or that its failure was ``final``.

**Exactly once at the caller.** The :class:`~datagraph.IO` handles that
``start_flow`` returned follow the attempts: a reader that has delivered k
values of an output goes on with value k+1 of the next attempt, never a
duplicate and never a gap.  That holds when the flow is *deterministic*:
the same inputs give the same values in the same order.  It is checked: the
new attempt's first k values are compared with the k values delivered (a
BLAKE3 digest of their encodings, the delivered ones read back from the
failed attempt's stream), and a difference fails the reader with
:class:`~datagraph.exceptions.RetryMismatchError` naming the run and the
output, rather than delivering a different sequence.  The check costs nothing
until a retry happens.  Within one attempt every processor reads its inputs
exactly once, as in any run.

The retries are driven by the process that started the run (the one holding
its IO handles): a reader that meets a retried failure, or the watcher of
that process's event loop when nobody reads, starts the next attempt.
"""

from .attempts import RunAttempts, start_retried
from .policy import (
    RETRIED_CAUSES,
    Attempt,
    RetryPolicy,
    attempts_from,
    cause_name,
    follow_attempt,
    pending_retry,
    record_fields,
)
from .reader import RetryingReader

__all__ = [
    "RETRIED_CAUSES",
    "Attempt",
    "RetryPolicy",
    "RetryingReader",
    "RunAttempts",
    "attempts_from",
    "cause_name",
    "follow_attempt",
    "pending_retry",
    "record_fields",
    "start_retried",
]
