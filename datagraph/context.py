"""What the engine's lower layers need of the process's supervisor.

The core is layered so that its imports form no circle: ``streams``, ``io``,
``runner``, ``liveness``, ``rerun`` and the executors depend on
:class:`~datagraph.runtime.Runtime` and on the small :class:`Context`
protocol below, never on :class:`~datagraph.Supervisor`. Only the top (the
supervisor, and the programs that attach one) knows the whole.

:func:`attached` is how a layer below finds the process's context without
importing the supervisor: ``Supervisor.attach()`` registers itself here and
``detach()`` forgets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .exceptions import ConfigError

if TYPE_CHECKING:
    from .runtime import Runtime
    from .settings import Settings
    from .store.client import StoreAddress
    from .store.codec import Codec

__all__ = ["Context", "Described", "attached", "not_attached", "set_attached"]


class Described(Protocol):
    """What telemetry tells of an executor: its kind ("local", "celery", ...)."""

    @property
    def kind(self) -> str: ...


class Context(Protocol):
    """A supervisor as the layers below it see it (``Supervisor`` is the one implementation)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def codec(self) -> Codec: ...

    @property
    def address(self) -> StoreAddress: ...

    @property
    def signing_secret(self) -> bytes: ...

    @property
    def executor(self) -> Described: ...

    async def runtime(self) -> Runtime:
        """This event loop's connections and host task group."""
        ...


_attached: Context | None = None


def attached() -> Context:
    """The context attached in this process, or a ConfigError that says how to attach one."""
    if _attached is None:
        raise not_attached()
    return _attached


def not_attached() -> ConfigError:
    """The error for a process that has no supervisor attached yet."""
    return ConfigError(
        "no Supervisor is attached in this process; call "
        "Supervisor.attach(redis_config=..., executor=...) first"
    )


def set_attached(context: Context | None) -> None:
    """Register (or, with None, forget) this process's context; the supervisor's business."""
    global _attached
    _attached = context
