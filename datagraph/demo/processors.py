"""Implementations of the demo processors declared in :mod:`datagraph.demo`.

Importing this module registers them in the importing process (the demo's
Celery service does; so do the tests on the LocalExecutor).  Values are
small and made up, but deterministic, so runs can be checked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fast_depends import Depends

from .. import demo
from ..io import IO, IOVal
from . import OrderFeed

__all__ = [
    "CustomerDirectory",
    "DemoFailure",
    "check_numbers",
    "click",
    "customer_directory",
    "daily_report",
    "enrich_events",
    "extract_clicks",
    "extract_orders",
    "generate_numbers",
    "load_warehouse",
    "merge_events",
    "order_line",
    "paced",
    "parse_orders",
]

COUNTRIES = ("DE", "FR", "NL", "SE", "PL")
PAGES = ("/", "/search", "/product", "/cart", "/checkout")
CUSTOMERS = 97
SEGMENTS = ("new", "regular", "loyal", "vip")
#: Seconds between pacing checkpoints of the sources.
TICK = 0.02
#: How often load_warehouse reports a load, in seconds.
LOAD_EVERY = 0.5


class DemoFailure(RuntimeError):
    """What ``check_numbers`` raises when it is told to fail."""


def order_line(i: int) -> str:
    """Order ``i`` as the shop exports it: ``order_id,customer,country,amount_cents``."""
    return f"{i},c{i % CUSTOMERS:03d},{COUNTRIES[i % len(COUNTRIES)]},{100 + (i * 37) % 9_900}"


def click(i: int) -> dict[str, Any]:
    return {"kind": "click", "customer": f"c{(i * 7) % CUSTOMERS:03d}", "page": PAGES[i % len(PAGES)]}


async def paced(
    count: float, rate: int, seconds: float | None = None
) -> AsyncIterator[range]:
    """Indices ``0, 1, ... count - 1`` in chunks, ``rate`` a second, for at most ``seconds``.

    A consumer held up by backpressure does not make the source burst later:
    the schedule restarts from where it is.
    """
    now = anyio.current_time()
    deadline = now + seconds if seconds is not None else math.inf
    per_tick = max(1, round(rate * TICK))
    start, sent = now, 0
    while sent < count and now < deadline:
        chunk = int(min(per_tick, count - sent))
        yield range(sent, sent + chunk)
        sent += chunk
        due = start + sent / rate
        now = anyio.current_time()
        if due > now:
            await anyio.sleep(due - now)
            now = anyio.current_time()
        elif now - due > TICK:
            start = now - sent / rate  # fell behind: do not catch up in a burst


@demo.extract_orders
async def extract_orders(feed: IO[OrderFeed]) -> AsyncIterator[IOVal[str]]:
    """Yields `feed.orders` CSV lines (order_id,customer,country,amount_cents),
    `feed.rate` a second.

    With `orders: 0` it keeps going until `feed.seconds` have passed.
    """
    spec = OrderFeed.model_validate(await feed.first())
    async for indices in paced(spec.orders or math.inf, spec.rate, spec.seconds):
        for i in indices:
            yield IOVal("raw_orders", order_line(i))


@demo.extract_clicks
async def extract_clicks(feed: IO[OrderFeed]) -> AsyncIterator[IOVal[dict[str, Any]]]:
    """Yields one click (customer and page) per order of the feed, at the same rate."""
    spec = OrderFeed.model_validate(await feed.first())
    async for indices in paced(spec.orders or math.inf, spec.rate, spec.seconds):
        for i in indices:
            yield IOVal("clicks", click(i))


@demo.parse_orders
async def parse_orders(raw_orders: IO[str]) -> AsyncIterator[IOVal[dict[str, Any]]]:
    """Parses each CSV line into a dict: kind, order_id, customer, country, amount_cents."""
    async for lines in raw_orders.batches():
        for line in lines:
            order_id, customer, country, cents = line.split(",")
            yield IOVal(
                "orders",
                {
                    "kind": "order",
                    "order_id": int(order_id),
                    "customer": customer,
                    "country": country,
                    "amount_cents": int(cents),
                },
            )


@demo.merge_events
async def merge_events(
    orders: IO[dict[str, Any]], clicks: IO[dict[str, Any]]
) -> AsyncIterator[IOVal[dict[str, Any]]]:
    """Fan-in: orders and clicks as one stream of events, in the order they arrive."""
    async for item in orders.as_available(clicks):
        yield IOVal("events", item.value)


class CustomerDirectory:
    """A stand-in for a slow lookup service.

    It answers ``capacity()`` lookups a second, a capacity that swings between
    ``low`` and ``high`` over ``period`` seconds; callers wait their turn in
    :meth:`lookup`.
    """

    def __init__(self, low: float = 500.0, high: float = 1_700.0, period: float = 30.0) -> None:
        self.low, self.high, self.period = low, high, period
        self.opened = anyio.current_time()
        self._ready_at = self.opened
        self.lookups = 0
        self.closed = False

    def capacity(self, at: float) -> float:
        """Lookups a second at loop time ``at``."""
        middle, swing = (self.high + self.low) / 2, (self.high - self.low) / 2
        return middle + swing * math.sin(2 * math.pi * (at - self.opened) / self.period)

    async def lookup(self, customer: str) -> str:
        """The customer's segment, once the directory has time for it."""
        now = anyio.current_time()
        # Busy: carry on from where the last lookup finished (a late wake-up
        # must not cost capacity); idle for a while: start from now.
        start = self._ready_at if now - self._ready_at < 0.05 else now
        self._ready_at = start + 1.0 / self.capacity(now)
        if self._ready_at - now > 0.01:  # sleep in slices, not per lookup
            await anyio.sleep(self._ready_at - now)
        self.lookups += 1
        return SEGMENTS[int(customer[1:]) % len(SEGMENTS)]

    def close(self) -> None:
        self.closed = True


async def customer_directory() -> AsyncIterator[CustomerDirectory]:
    """Dependency: a directory connection for the duration of one processor run."""
    directory = CustomerDirectory()
    try:
        yield directory
    finally:
        directory.close()


@demo.enrich_events
async def enrich_events(
    events: IO[dict[str, Any]],
    directory: Annotated[CustomerDirectory, Depends(customer_directory)],
) -> AsyncIterator[IOVal[dict[str, Any]]]:
    """Adds the customer's `segment` to each event.

    Deliberately slow: its speed swings between 500 and 1,700 events a second
    over 30 seconds, so the edge into it fills and drains.
    """
    async for batch in events.batches():
        for event in batch:
            segment = await directory.lookup(event["customer"])
            yield IOVal("enriched", {**event, "segment": segment})


@demo.load_warehouse
async def load_warehouse(enriched: IO[dict[str, Any]]) -> AsyncIterator[IOVal[dict[str, Any]]]:
    """Loads enriched events in batches; yields one summary per load (about two a second)."""
    load = 0
    pending = _Load()
    last = anyio.current_time()
    async for batch in enriched.batches():
        for event in batch:
            pending.add(event)
        now = anyio.current_time()
        if now - last >= LOAD_EVERY:
            load += 1
            yield IOVal("loaded", pending.summary(load))
            pending, last = _Load(), now
    if pending.events:
        yield IOVal("loaded", pending.summary(load + 1))


class _Load:
    def __init__(self) -> None:
        self.events = self.orders = self.clicks = self.revenue_cents = 0
        self.segments: Counter[str] = Counter()

    def add(self, event: dict[str, Any]) -> None:
        self.events += 1
        if event["kind"] == "order":
            self.orders += 1
            self.revenue_cents += event["amount_cents"]
        else:
            self.clicks += 1
        self.segments[event["segment"]] += 1

    def summary(self, load: int) -> dict[str, Any]:
        return {
            "load": load,
            "orders": self.orders,
            "clicks": self.clicks,
            "revenue_cents": self.revenue_cents,
            "segments": dict(self.segments),
        }


@demo.daily_report
async def daily_report(loaded: IO[dict[str, Any]]) -> AsyncIterator[IOVal[dict[str, Any]]]:
    """Runs once every load is done (wait=True); yields one report of the totals."""
    loads = await loaded.collect()
    segments: Counter[str] = Counter()
    for summary in loads:
        segments.update(summary["segments"])
    yield IOVal(
        "report",
        {
            "loads": len(loads),
            "orders": sum(s["orders"] for s in loads),
            "clicks": sum(s["clicks"] for s in loads),
            "revenue": sum(s["revenue_cents"] for s in loads) / 100,
            "segments": dict(sorted(segments.items())),
        },
    )


@demo.generate_numbers
async def generate_numbers(n: IO[int]) -> AsyncIterator[IOVal[int]]:
    """Counts from 0 to n - 1, a thousand numbers a second."""
    count = await n.first()
    if count < 0:
        raise ValueError(f"n must not be negative, got {count}")
    async for indices in paced(count, 1_000):
        for i in indices:
            yield IOVal("numbers", i)


@demo.check_numbers
async def check_numbers(numbers: IO[int], fail: IO[bool]) -> AsyncIterator[IOVal[int]]:
    """Passes each number on.

    With `fail` true it raises DemoFailure at number 10, to show what a
    failing processor looks like.
    """
    told_to_fail = await fail.first()
    async for number in numbers.stream():
        if told_to_fail and number >= 10:
            raise DemoFailure(f"check_numbers was told to fail (fail=true) and stopped at number {number}")
        yield IOVal("checked", number)
