"""One poller per live view, shared by every viewer of it.

A *topic* (one run, or the operations page with one filter) has a
:class:`Feed`: a coroutine that reads the store once and returns rendered
fragments by SSE event name. The first subscriber to a topic starts its
poller in the hub's task group; the poller keeps the latest fragments and
wakes the subscribers; when the last subscriber leaves, the poller is
cancelled. Fifty open tabs on one run therefore cost one read per interval,
not fifty.

Each subscriber is sent only the fragments that changed since it last got
them, and a slow one skips to the newest version rather than queueing old
ones.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

__all__ = ["Feed", "Hub", "Subscription"]

log = logging.getLogger("web.hub")

Fragments = dict[str, str]


@dataclass
class Feed:
    """How a topic is polled."""

    #: Reads the store once; returns fragments by SSE event name.
    poll: Callable[[], Awaitable[Fragments]]
    #: Seconds until the next poll (called after each one, so it may slow down).
    interval: Callable[[], float]
    #: Fragments telling viewers that a poll failed (they keep the last good ones).
    on_error: Callable[[BaseException], Fragments]


@dataclass(eq=False)
class _Topic:
    key: str
    feed: Feed
    subscribers: int = 0
    version: int = 0
    fragments: Fragments = field(default_factory=dict)
    changed: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def publish(self, fragments: Fragments) -> None:
        self.fragments = {**self.fragments, **fragments}
        self.version += 1
        changed, self.changed = self.changed, anyio.Event()
        changed.set()


class Subscription:
    """Iterates over (event name, fragment) pairs as they change.

    A plain async iterator rather than an async generator, so that a viewer
    cancelled mid-wait leaves nothing to finalise.
    """

    def __init__(self, topic: _Topic) -> None:
        self._topic = topic
        self._sent: Fragments = {}
        self._seen = 0
        self._ready: list[tuple[str, str]] = []

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[str, str]:
        topic = self._topic
        while not self._ready:
            if topic.version == self._seen:
                await topic.changed.wait()
                continue
            self._seen = topic.version
            for name, data in topic.fragments.items():
                if self._sent.get(name) != data:
                    self._sent[name] = data
                    self._ready.append((name, data))
        return self._ready.pop(0)


class Hub:
    """Topics with their pollers; run it with ``async with hub.running():``."""

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}
        self._task_group: TaskGroup | None = None
        #: Pollers started since the hub began (a test counts these).
        self.pollers_started = 0
        #: Polls made, all topics together.
        self.polls = 0

    @property
    def active_pollers(self) -> int:
        return len(self._topics)

    def subscribers(self, key: str) -> int:
        topic = self._topics.get(key)
        return topic.subscribers if topic is not None else 0

    def has(self, key: str) -> bool:
        return key in self._topics

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            try:
                yield self
            finally:
                self._task_group = None
                tg.cancel_scope.cancel()
                self._topics.clear()

    @asynccontextmanager
    async def subscribe(self, key: str, make_feed: Callable[[], Feed]) -> AsyncIterator[Subscription]:
        """Subscribe to ``key``, starting its poller (with ``make_feed()``) if needed."""
        if self._task_group is None:
            raise RuntimeError("the hub is not running")
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = _Topic(key, make_feed())
            self.pollers_started += 1
            self._task_group.start_soon(self._poll, topic, name=f"dashboard-poller-{key}")
        topic.subscribers += 1
        try:
            yield Subscription(topic)
        finally:
            topic.subscribers -= 1
            if topic.subscribers == 0 and self._topics.get(key) is topic:
                del self._topics[key]
                topic.scope.cancel()

    async def _poll(self, topic: _Topic) -> None:
        """Poll at a fixed rate (the interval counts from the start of each poll)."""
        with topic.scope:
            while True:
                started = anyio.current_time()
                try:
                    fragments = await topic.feed.poll()
                except Exception as exc:
                    log.warning("live view %s: poll failed: %s", topic.key, exc)
                    fragments = topic.feed.on_error(exc)
                    delay = max(2.0, topic.feed.interval())
                else:
                    delay = topic.feed.interval()
                self.polls += 1
                topic.publish(fragments)
                await anyio.sleep_until(started + delay)
