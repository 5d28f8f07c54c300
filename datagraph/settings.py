"""One settings object for the engine.

Every field can be given to ``Supervisor.attach(**settings)`` or set in the
environment as ``DATAGRAPH_<FIELD>`` (upper case); an explicit argument wins.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigError
from .store.keys import DEFAULT_NAMESPACE, check_namespace

__all__ = ["Settings", "redis_cluster_from_env"]

#: Development signing key, used only when no secret is configured and the
#: store is not an embedded one (a warning is logged when it is used).
DEVELOPMENT_SECRET = b"datagraph-development-secret-change-me"


@dataclass(frozen=True, slots=True)
class Settings:
    """Engine settings; see the README's Configuration section."""

    #: Signing key for stream payloads (``DATAGRAPH_SECRET``).
    secret: bytes | None = field(default=None, repr=False)
    #: Values an in-flow reader may lag behind its writer before the writer waits.
    max_backlog: int = 10_000
    #: Most values carried by one stream entry.
    max_batch: int = 1_000
    #: Longest a yielded value waits in the writer's buffer, in seconds.
    linger: float = 0.005
    #: Largest encoded stream entry, in bytes; a larger value is refused.
    max_entry_bytes: int = 16 * 1024 * 1024
    #: Most readers blocking on connections of their own per event loop; readers past
    #: that poll on the shared connection (each connection costs file descriptors).
    max_blocking_readers: int = 256
    #: Entries fetched by one read.
    read_count: int = 256
    #: How long one blocking read waits in the store, in seconds.
    read_block: float = 1.0
    #: A stream whose producer wrote nothing for this long fails its readers, in seconds.
    idle_timeout: float = 300.0
    #: How long a finished run's keys are kept, in seconds.
    retention: float = 24 * 3600.0
    #: Upper bound on a running run's key lifetime, in seconds.
    max_run_duration: float = 7 * 24 * 3600.0
    #: Deadline for connecting to the store and for one ordinary command, in seconds.
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    #: How long readers and writers keep retrying a lost connection before failing, in seconds.
    reconnect_timeout: float = 30.0
    #: Worker heartbeat period and how many missed beats count as dead.
    heartbeat_interval: float = 2.0
    heartbeat_misses: int = 2
    #: How long offline workers stay visible before they are purged, in seconds.
    worker_retention: float = 3600.0
    #: Publish registrations, heartbeats and per-edge metrics.
    telemetry: bool = True
    #: Record each run's history (a sample of its counters per second); needs ``telemetry``.
    history: bool = True
    #: How long a dispatched processor may wait for a worker to pick it up, in seconds.
    dispatch_timeout: float = 30.0
    #: Largest encoded inputs kept with a run so that it can be run again, in bytes
    #: (0: keep none). A run whose inputs are larger says so instead.
    rerun_inputs_max_bytes: int = 1024 * 1024
    #: Largest encoded inputs of a run handed straight to the processors that read them
    #: in the process that started it, in bytes (0: they read them back from the store).
    hand_over_inputs_max_bytes: int = 1024 * 1024
    #: Hand the entries a processor writes to readers in the same runtime waiting for
    #: them, instead of having them read back from the store (see datagraph.local_streams).
    hand_over_local: bool = True
    #: Prefix of every key (and of the Celery queues): deployments sharing one store
    #: stay apart by using different namespaces (``DATAGRAPH_NAMESPACE``).
    namespace: str = DEFAULT_NAMESPACE
    #: Times a run that failed for a reason other than its own code is started again
    #: (``start_flow(retries=...)`` and ``Flow.retries`` override it; see ``datagraph.retries``).
    retries: int = 0
    #: Exception type names (comma-separated) retried as well, e.g. ``"TimeoutError,OSError"``.
    retry_on: str = ""
    #: Seconds before the first retry of a run; doubled for each further one (at most 30 s).
    retry_backoff: float = 0.5
    #: Seconds a Celery worker asked to stop lets its running processors go on before it
    #: hands them over (fails them as ``WorkerStopping``, so their runs are retried).
    shutdown_grace: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from ``DATAGRAPH_*`` variables, then ``overrides``."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(map(repr, unknown))}; "
                f"known settings are: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name, f in known.items():
            env = os.environ.get(f"DATAGRAPH_{name.upper()}")
            if env is not None:
                values[name] = _parse(name, env, f.default)
        for name, value in overrides.items():
            values[name] = _coerce(name, value, known[name].default)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = (
            "max_backlog",
            "max_batch",
            "max_entry_bytes",
            "read_count",
            "max_blocking_readers",
            "read_block",
            "idle_timeout",
            "retention",
            "max_run_duration",
            "connect_timeout",
            "request_timeout",
            "reconnect_timeout",
            "heartbeat_interval",
            "heartbeat_misses",
            "dispatch_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting {name!r} must be positive, got {getattr(self, name)!r}")
        for name in ("rerun_inputs_max_bytes", "hand_over_inputs_max_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"setting {name!r} must not be negative, got {getattr(self, name)!r}")
        for name in ("retries", "retry_backoff", "shutdown_grace"):
            if getattr(self, name) < 0:
                raise ConfigError(f"setting {name!r} must not be negative, got {getattr(self, name)!r}")
        if self.linger < 0:
            raise ConfigError(f"setting 'linger' must not be negative, got {self.linger!r}")
        try:
            check_namespace(self.namespace)
        except ValueError as exc:
            raise ConfigError(f"setting 'namespace': {exc}") from None

    @property
    def lease(self) -> float:
        """Seconds without a heartbeat after which a worker counts as dead."""
        return self.heartbeat_interval * (self.heartbeat_misses + 0.5)


def _coerce(name: str, value: Any, default: Any) -> Any:
    if name == "secret":
        if value is None or isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode()
        raise ConfigError("setting 'secret' must be bytes or str")
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"setting {name!r} must be a str, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"setting {name!r} must be a bool, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"setting {name!r} must be a {type(default).__name__}, got {value!r}")


def _parse(name: str, text: str, default: Any) -> Any:
    try:
        if name == "secret":
            return text.encode()
        if isinstance(default, str):
            return text
        if isinstance(default, bool):
            return text.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(text)
        return float(text)
    except ValueError:
        raise ConfigError(
            f"environment variable DATAGRAPH_{name.upper()}={text!r} is not a valid {type(default).__name__}"
        ) from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def redis_cluster_from_env() -> bool | None:
    """``DATAGRAPH_REDIS_CLUSTER``: true or false forces the store's mode; unset or ``auto`` detects it."""
    text = os.environ.get("DATAGRAPH_REDIS_CLUSTER", "").strip().lower()
    if text in {"", "auto"}:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(
        f"environment variable DATAGRAPH_REDIS_CLUSTER={text!r} is not valid: "
        "use true (a Valkey Cluster), false (a standalone server) or auto (detect; the default)"
    )
